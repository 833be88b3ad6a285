//! `ctx.attachments.<key>`: files uploaded with the plugin configuration
//! (`sluice-ingest plugins attach`), each `{content_type, file_name, contents}`, read-only.
//! Their size is bounded where they are uploaded; in the VM they count against the
//! plugin's memory like anything else it holds.

use mlua::Value as LuaValue;
use serde::{Deserialize, Serialize};

use super::{Build, Namespace};

pub(super) const ATTACHMENTS: Namespace = Namespace {
    name: "attachments",
    declarations: r#"-- A file uploaded with the plugin configuration (`sluice-ingest plugins attach`).
type Attachment = { content_type: string, file_name: string, contents: string }
"#,
    field: r#"	-- Files uploaded with this plugin configuration, by key; read-only.
	attachments: { [string]: Attachment },
"#,
    build,
    frozen: true,
};

/// The largest file `sluice-ingest plugins attach` and `sluice-plugin --attach` take,
/// unless told otherwise.
pub const ATTACHMENT_MAX_BYTES: u64 = 1 << 20;

/// One uploaded file, as a plugin instance carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub key: String,
    pub content_type: String,
    pub file_name: String,
    /// The bytes, as base64 on the wire between supervisor and worker.
    #[serde(with = "base64_bytes")]
    pub contents: Vec<u8>,
}

impl Attachment {
    /// Reads `path` as attachment `key`: refused past `max_bytes`, or when the key is
    /// not a plain name (`[A-Za-z0-9_]`, as `ctx.attachments.<key>` reads it). The
    /// content type is `content_type` when given, else told from the file's extension.
    pub fn from_file(
        key: &str,
        path: &std::path::Path,
        content_type: Option<&str>,
        max_bytes: u64,
    ) -> Result<Attachment, String> {
        if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("attachment key {key:?}: use 1 to 64 letters, digits or _"));
        }
        let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        if size > max_bytes {
            return Err(format!(
                "{} is {size} bytes, over the {max_bytes} byte limit for an attachment",
                path.display()
            ));
        }
        let contents = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let content_type = content_type.map(str::to_string).unwrap_or_else(|| detect(&file_name, &contents).into());
        Ok(Attachment { key: key.into(), content_type, file_name, contents })
    }
}

/// A content type from the file name, or from the bytes when the name says nothing.
fn detect(file_name: &str, contents: &[u8]) -> &'static str {
    let ext = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "txt" | "text" => "text/plain",
        "yaml" | "yml" => "application/yaml",
        "xml" => "application/xml",
        "pem" | "crt" | "key" => "application/x-pem-file",
        "mmdb" => "application/octet-stream",
        _ if std::str::from_utf8(contents).is_ok() => "text/plain",
        _ => "application/octet-stream",
    }
}

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let all = b.lua.create_table()?;
    for a in b.host.attachments() {
        let t = b.lua.create_table()?;
        t.raw_set("content_type", a.content_type.as_str())?;
        t.raw_set("file_name", a.file_name.as_str())?;
        t.raw_set("contents", b.lua.create_string(&a.contents)?)?;
        t.set_readonly(true);
        all.raw_set(a.key.as_str(), t)?;
    }
    Ok(LuaValue::Table(all))
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_within_their_limit_and_typed_by_name_or_contents() {
        let dir = std::env::temp_dir().join(format!("sluice-attach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("map.json");
        std::fs::write(&json, br#"{"a": 1}"#).unwrap();
        let blob = dir.join("blob");
        std::fs::write(&blob, [0xff, 0xfe, 0x00]).unwrap();
        let a = Attachment::from_file("mapping", &json, None, 100).unwrap();
        assert_eq!(
            (a.content_type.as_str(), a.file_name.as_str(), a.contents.len()),
            ("application/json", "map.json", 8)
        );
        assert_eq!(Attachment::from_file("b", &blob, None, 100).unwrap().content_type, "application/octet-stream");
        assert_eq!(Attachment::from_file("b", &blob, Some("image/png"), 100).unwrap().content_type, "image/png");
        assert!(Attachment::from_file("mapping", &json, None, 7).unwrap_err().contains("over the 7 byte limit"));
        assert!(Attachment::from_file("no-dashes", &json, None, 100).is_err());
        assert!(Attachment::from_file("", &json, None, 100).is_err());
        let wire = serde_json::to_string(&a).unwrap();
        assert!(wire.contains("eyJhIjogMX0="), "contents cross as base64: {wire}");
        assert_eq!(serde_json::from_str::<Attachment>(&wire).unwrap(), a);
    }
}
