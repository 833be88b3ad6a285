//! A second set of real servers, each speaking only TLS and each demanding credentials,
//! as managed services do: Kafka (Tansu with SCRAM behind stunnel, client certificates
//! required), Postgres (hostssl + scram-sha-256, client certificate checked), Redis (TLS
//! port only, an ACL user, client certificates required) and ClickHouse (https, a user
//! with a password). The certificates come from a CA generated for the run.
//!
//! Each server is this stack's own process, stopped by its pid when the stack drops.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::{free_port, unique};

pub const KAFKA_USER: &str = "sluice-kafka";
pub const REDIS_USER: &str = "sluice-redis";
pub const POSTGRES_USER: &str = "sluice_pg";
pub const CLICKHOUSE_USER: &str = "sluice_ch";

/// The topics the pipeline needs, created before the broker starts asking for credentials.
pub const TOPICS: &[&str] = &[
    "events_plugin_ingestion",
    "events_plugin_ingestion_overflow",
    "events_plugin_ingestion_historical",
    "session_recording_snapshot_item_events",
    "session_recording_snapshot_item_overflow",
    "events_dead_letter_queue",
    "clickhouse_events_json",
    "exports_dead_letter_queue",
];

pub struct TlsStack {
    pub dir: PathBuf,
    /// Passwords, one per server, distinct so a test can look for each in output.
    pub kafka_password: String,
    pub redis_password: String,
    pub postgres_password: String,
    pub clickhouse_password: String,
    pub kafka_port: u16,
    pub redis_port: u16,
    pub postgres_port: u16,
    pub clickhouse_port: u16,
    children: Vec<Child>,
    postgres_data: PathBuf,
}

struct Pem {
    cert: String,
    key: String,
}

impl TlsStack {
    pub fn start(test: &str) -> TlsStack {
        // Under /var/tmp so the postgres user (Postgres refuses to run as root) can read it.
        let dir = PathBuf::from("/var/tmp").join(unique(&format!("sluice-tls-{test}")));
        std::fs::create_dir_all(&dir).expect("stack dir");
        let secret = |name: &str| format!("{name}-{}", unique("pw").replace('-', ""));
        let mut stack = TlsStack {
            postgres_data: dir.join("postgres"),
            dir,
            kafka_password: secret("kafka"),
            redis_password: secret("redis"),
            postgres_password: secret("postgres"),
            clickhouse_password: secret("clickhouse"),
            kafka_port: free_port(),
            redis_port: free_port(),
            postgres_port: free_port(),
            clickhouse_port: free_port(),
            children: Vec::new(),
        };
        stack.write_certificates();
        stack.start_kafka();
        stack.start_redis();
        stack.start_postgres();
        stack.start_clickhouse();
        stack
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    fn write_certificates(&self) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Sluice test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issue = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, common_name);
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("certificate");
            Pem { cert: cert.pem(), key: key.serialize_pem() }
        };
        let server = issue(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let client = issue(vec![], "sluice");
        let write = |name: &str, text: &str| std::fs::write(self.dir.join(name), text).expect("write pem");
        write("ca.pem", &ca_cert.pem());
        write("server.pem", &server.cert);
        write("server.key", &server.key);
        write("client.pem", &client.cert);
        write("client.key", &client.key);
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push(child);
    }

    /// Waits for the server just spawned to listen; if it exits first (a port taken
    /// between choosing and binding it, a configuration it refuses), says so with its log.
    fn wait_for_child(&mut self, name: &str, port: u16) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let child = self.children.last_mut().expect("a server was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited ({status}) before listening on {port}:\n{}", self.log(name));
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{name} did not listen on {port}:\n{}", self.log(name));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Tansu keeps SCRAM credentials in its storage and answers nothing unauthenticated
    /// once `--authentication` is on, so users and topics are made by a first broker on
    /// the same sqlite file without it; the second broker asks for credentials, and
    /// stunnel in front of it speaks TLS and demands a client certificate.
    fn start_kafka(&mut self) {
        let tansu = crate::tansu_path();
        let inner = free_port();
        let listener = format!("tcp://127.0.0.1:{inner}");
        let advertised = format!("tcp://localhost:{}", self.kafka_port);
        let dir = self.dir.clone();
        let broker = |authentication: bool| {
            let mut c = Command::new(&tansu);
            c.current_dir(&dir).args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "sqlite://kafka.db",
            ]);
            if authentication {
                c.arg("--authentication");
            }
            c
        };
        self.spawn("tansu-setup", &mut broker(false));
        self.wait_for_child("tansu-setup", inner);
        let tansu_cli = |args: &[&str]| {
            let out = Command::new(&tansu).args(args).output().expect("tansu");
            assert!(out.status.success(), "tansu {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let plain = format!("tcp://127.0.0.1:{inner}");
        for mechanism in ["scram256", "scram512"] {
            tansu_cli(&[
                "user",
                "create",
                KAFKA_USER,
                &self.kafka_password,
                "--broker",
                &plain,
                "--mechanism",
                mechanism,
            ]);
        }
        for topic in TOPICS {
            tansu_cli(&["topic", "create", topic, "--broker", &plain, "--partitions", "2"]);
        }
        let mut setup = self.children.pop().expect("setup broker");
        let _ = setup.kill();
        let _ = setup.wait();
        wait_for_port_closed(inner);
        self.spawn("tansu", &mut broker(true));
        self.wait_for_child("tansu", inner);

        let config = self.dir.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{inner}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                self.kafka_port,
                self.dir.join("server.pem").display(),
                self.dir.join("server.key").display(),
                self.ca().display(),
            ),
        )
        .expect("stunnel.conf");
        let stunnel = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|c| {
                Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success())
            })
            .expect("stunnel4 installed (scripts/services.sh installs it)");
        self.spawn("stunnel", Command::new(stunnel).arg(&config));
        self.wait_for_child("stunnel", self.kafka_port);
    }

    fn start_redis(&mut self) {
        let dir = self.dir.clone();
        let file = |name: &str| dir.join(name).display().to_string();
        let port = self.redis_port.to_string();
        let password = format!(">{}", self.redis_password);
        self.spawn(
            "redis",
            Command::new("redis-server").args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &file("server.pem"),
                "--tls-key-file",
                &file("server.key"),
                "--tls-ca-cert-file",
                &file("ca.pem"),
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &file(""),
                "--user",
                "default",
                "off",
                "--user",
                REDIS_USER,
                "on",
                &password,
                "~*",
                "&*",
                "+@all",
            ]),
        );
        self.wait_for_child("redis", self.redis_port);
    }

    fn start_postgres(&mut self) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("postgresql installed (scripts/services.sh installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("a postgresql bin dir");
        let root = is_root();
        let data = self.postgres_data.clone();
        let keys = self.dir.join("postgres-tls");
        std::fs::create_dir_all(&keys).expect("keys dir");
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(self.dir.join(name), keys.join(name)).expect("copy key");
        }
        let pwfile = keys.join("pw");
        std::fs::write(&pwfile, &self.postgres_password).expect("pw file");
        let as_postgres = |program: PathBuf| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&self.dir));
            run(Command::new("chmod").args(["755"]).arg(&self.dir));
        }
        run(Command::new("chmod").arg("600").arg(keys.join("server.key")));
        run(as_postgres(bin.join("initdb"))
            .args(["-N", "-A", "scram-sha-256", "-U", POSTGRES_USER, "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(&data));
        // TLS only, a password, and a client certificate from the CA.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\nhostssl all all ::1/128 scram-sha-256 clientcert=verify-ca\n",
        )
        .expect("pg_hba.conf");
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
            self.postgres_port,
            keys.display(),
            keys.join("server.pem").display(),
            keys.join("server.key").display(),
            keys.join("ca.pem").display(),
        );
        run(as_postgres(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "30", "-o", &options, "start"]));
        wait_for_port("postgres", self.postgres_port);
    }

    fn start_clickhouse(&mut self) {
        let dir = self.dir.join("clickhouse");
        std::fs::create_dir_all(dir.join("data")).expect("clickhouse dir");
        std::fs::create_dir_all(dir.join("tmp")).expect("clickhouse dir");
        std::fs::write(
            dir.join("users.xml"),
            format!(
                "<yandex><profiles><default></default></profiles>\
                 <users><{CLICKHOUSE_USER}><password>{}</password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks>\
                 <profile>default</profile><quota>default</quota></{CLICKHOUSE_USER}></users>\
                 <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>\
                 <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas></yandex>",
                self.clickhouse_password
            ),
        )
        .expect("users.xml");
        let d = |name: &str| dir.join(name).display().to_string();
        let t = |name: &str| self.dir.join(name).display().to_string();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<yandex><logger><level>warning</level><log>{}</log><errorlog>{}</errorlog></logger>\
                 <https_port>{}</https_port><tcp_port>{}</tcp_port><listen_host>127.0.0.1</listen_host>\
                 <path>{}/</path><tmp_path>{}/</tmp_path><users_config>{}</users_config>\
                 <default_profile>default</default_profile><default_database>default</default_database>\
                 <mark_cache_size>268435456</mark_cache_size>\
                 <openSSL><server><certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
                 <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
                 <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols>\
                 <preferServerCiphers>true</preferServerCiphers></server></openSSL></yandex>",
                d("server.log"),
                d("error.log"),
                self.clickhouse_port,
                free_port(),
                d("data"),
                d("tmp"),
                d("users.xml"),
                t("server.pem"),
                t("server.key"),
            ),
        )
        .expect("config.xml");
        self.spawn("clickhouse", Command::new("clickhouse-server").arg(format!("--config-file={}", d("config.xml"))));
        self.wait_for_child("clickhouse", self.clickhouse_port);
    }

    /// Settings that take both binaries through every server of the stack, TLS verified
    /// against the run's CA, authenticated, client certificates presented.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            ("KAFKA_HOSTS".into(), format!("localhost:{}", self.kafka_port)),
            ("KAFKA_SECURITY_PROTOCOL".into(), "sasl_ssl".into()),
            ("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
            ("KAFKA_SASL_USERNAME".into(), KAFKA_USER.into()),
            ("KAFKA_SASL_PASSWORD".into(), self.kafka_password.clone()),
            ("KAFKA_SSL_CA_LOCATION".into(), path(self.ca())),
            ("KAFKA_SSL_CERTIFICATE_LOCATION".into(), path(self.client_cert())),
            ("KAFKA_SSL_KEY_LOCATION".into(), path(self.client_key())),
            ("DATABASE_URL".into(), self.database_url("sluice")),
            (
                "REDIS_URL".into(),
                format!("rediss://{REDIS_USER}:{}@localhost:{}", self.redis_password, self.redis_port),
            ),
            ("REDIS_TLS_CA_FILE".into(), path(self.ca())),
            ("REDIS_TLS_CERT_FILE".into(), path(self.client_cert())),
            ("REDIS_TLS_KEY_FILE".into(), path(self.client_key())),
            ("CLICKHOUSE_URL".into(), format!("https://localhost:{}", self.clickhouse_port)),
            ("CLICKHOUSE_USER".into(), CLICKHOUSE_USER.into()),
            ("CLICKHOUSE_PASSWORD".into(), self.clickhouse_password.clone()),
            ("CLICKHOUSE_CA_FILE".into(), path(self.ca())),
        ]
    }

    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{}@localhost:{}/{database}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            self.postgres_password,
            self.postgres_port,
            self.ca().display(),
            self.client_cert().display(),
            self.client_key().display(),
        )
    }

    /// Creates `name` (through TLS, with the stack's credentials) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let admin = self.database_url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        crate::block_on(async {
            let pool = sqlx::PgPool::connect(&admin).await.expect("postgres over TLS");
            sqlx::query(&sql).execute(&pool).await.expect("create database");
        });
        self.database_url(name)
    }

    /// A ClickHouse query over https with the stack's CA and user.
    pub fn clickhouse(&self, sql: &str) -> String {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).expect("ca")).expect("ca pem");
        let client = reqwest::blocking::Client::builder().add_root_certificate(ca).build().expect("client");
        let r = client
            .post(format!("https://localhost:{}", self.clickhouse_port))
            .basic_auth(CLICKHOUSE_USER, Some(&self.clickhouse_password))
            .body(sql.to_string())
            .send()
            .expect("clickhouse over https");
        let status = r.status();
        let text = r.text().expect("clickhouse answer");
        assert!(status.is_success(), "clickhouse: {text}");
        text
    }
}

impl Drop for TlsStack {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // pg_ctl started Postgres in the background; its pid is in the data directory.
        if let Ok(pid) = std::fs::read_to_string(self.postgres_data.join("postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
            }
        }
        if std::env::var_os("SLUICE_KEEP_TLS_STACK").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for_port(name: &str, port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{name} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_port_closed(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_ok() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
