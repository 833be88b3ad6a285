//! Kafka security settings, named as Kafka's own clients name them, and a pass-through
//! for every other librdkafka property.

use clap::{Args, ValueEnum};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// Whether the brokers refused who we are, or TLS failed (an unknown CA, a host name
/// the certificate does not name, a client certificate missing). Waiting does not fix
/// these, so clients report them as errors rather than as passing disconnections.
fn is_refusal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL)
    )
}

/// Logs a refusal (see [`is_refusal`]) as an error naming the settings to check, and says
/// whether it was one; any other error is the caller's to report.
pub fn report_refusal(error: &KafkaError, reason: &str) -> bool {
    if !is_refusal(error) {
        return false;
    }
    tracing::error!(error = %error, reason, "kafka refused the connection: check the KAFKA_SASL_* and KAFKA_SSL_* settings");
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    #[value(name = "plaintext")]
    Plaintext,
    #[value(name = "ssl")]
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// The mechanisms that authenticate with a user name and password. (OAUTHBEARER needs a
/// token source: librdkafka's OIDC client wants libcurl, which is not built in; GSSAPI
/// wants Kerberos. Neither is offered rather than offered half-working.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How a client reaches the brokers securely. Every Kafka client of both binaries
/// (producers, consumers, the dead-letter commands) is configured from this.
#[derive(Debug, Clone, Args)]
pub struct KafkaSecurity {
    /// How clients talk to the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl. Any
    /// other librdkafka property can be set as KAFKA_PRODUCER_<NAME> or KAFKA_CONSUMER_<NAME>,
    /// the property's name in capitals with `_` for `.` (KAFKA_CONSUMER_FETCH_MAX_BYTES
    /// sets fetch.max.bytes).
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value = "plaintext",
        global = true
    )]
    pub kafka_security_protocol: SecurityProtocol,
    /// SASL mechanism, with sasl_plaintext or sasl_ssl: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true, global = true)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME", global = true)]
    pub kafka_sasl_username: Option<String>,
    /// SASL password (or a file holding it, named by KAFKA_SASL_PASSWORD_FILE).
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true, global = true)]
    pub kafka_sasl_password: Option<String>,
    /// CA certificates (PEM file) the brokers' certificates are checked against; the
    /// system's when unset. Broker host names are checked too.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", global = true)]
    pub kafka_ssl_ca_location: Option<String>,
    /// Client certificate (PEM file), for brokers that require mutual TLS.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION", global = true)]
    pub kafka_ssl_certificate_location: Option<String>,
    /// Client private key (PEM file), with KAFKA_SSL_CERTIFICATE_LOCATION.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION", global = true)]
    pub kafka_ssl_key_location: Option<String>,
    /// Password of the client key (or a file holding it, named by KAFKA_SSL_KEY_PASSWORD_FILE).
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD", hide_env_values = true, global = true)]
    pub kafka_ssl_key_password: Option<String>,
}

/// Which pass-through properties a client takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Producer => "KAFKA_PRODUCER_",
            Role::Consumer => "KAFKA_CONSUMER_",
        }
    }

    /// Properties Sluice's delivery guarantee rests on: an operator's value for one of
    /// them would lose or duplicate acknowledged events, so it is refused.
    fn guarded(self) -> &'static [&'static str] {
        match self {
            Role::Producer => &["acks", "enable.idempotence", "bootstrap.servers"],
            Role::Consumer => &["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"],
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KafkaSettingError {
    #[error("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM")]
    MechanismMissing { protocol: &'static str },
    #[error("KAFKA_SASL_MECHANISM is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL (use sasl_ssl)")]
    MechanismUnused { protocol: &'static str },
    #[error("KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")]
    CredentialsMissing { mechanism: &'static str },
    #[error("{setting} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS (use ssl or sasl_ssl)")]
    TlsUnused { setting: &'static str, protocol: &'static str },
    #[error("{variable} would set {property}, which Sluice's delivery guarantee depends on; it cannot be overridden")]
    Guarded { variable: String, property: String },
    #[error("{variable} is empty")]
    EmptyPassThrough { variable: String },
}

impl KafkaSecurity {
    /// Plaintext, no authentication: the local setup.
    pub fn plaintext() -> Self {
        KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::Plaintext,
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_ssl_key_password: None,
        }
    }

    /// Settings that cannot all be honoured are an error, not a partial configuration.
    pub fn validate(&self) -> Result<(), KafkaSettingError> {
        let protocol = self.kafka_security_protocol;
        match (protocol.uses_sasl(), self.kafka_sasl_mechanism) {
            (true, None) => return Err(KafkaSettingError::MechanismMissing { protocol: protocol.as_str() }),
            (false, Some(_)) => return Err(KafkaSettingError::MechanismUnused { protocol: protocol.as_str() }),
            (true, Some(mechanism)) => {
                let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
                if !given(&self.kafka_sasl_username) || !given(&self.kafka_sasl_password) {
                    return Err(KafkaSettingError::CredentialsMissing { mechanism: mechanism.as_str() });
                }
            }
            (false, None) => {}
        }
        if !protocol.uses_tls() {
            let tls_settings = [
                ("KAFKA_SSL_CA_LOCATION", &self.kafka_ssl_ca_location),
                ("KAFKA_SSL_CERTIFICATE_LOCATION", &self.kafka_ssl_certificate_location),
                ("KAFKA_SSL_KEY_LOCATION", &self.kafka_ssl_key_location),
                ("KAFKA_SSL_KEY_PASSWORD", &self.kafka_ssl_key_password),
            ];
            if let Some((setting, _)) = tls_settings.iter().find(|(_, v)| v.is_some()) {
                return Err(KafkaSettingError::TlsUnused { setting, protocol: protocol.as_str() });
            }
        }
        Ok(())
    }

    /// A client configuration for `role` at `hosts`: the security settings, then the
    /// operator's pass-through properties for that role from the environment.
    pub fn client_config(&self, hosts: &str, role: Role) -> Result<ClientConfig, KafkaSettingError> {
        self.client_config_from(hosts, role, std::env::vars())
    }

    fn client_config_from(
        &self,
        hosts: &str,
        role: Role,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ClientConfig, KafkaSettingError> {
        self.validate()?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", hosts);
        config.set("security.protocol", self.kafka_security_protocol.as_str());
        if let Some(mechanism) = self.kafka_sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        let optional = [
            ("sasl.username", &self.kafka_sasl_username),
            ("sasl.password", &self.kafka_sasl_password),
            ("ssl.ca.location", &self.kafka_ssl_ca_location),
            ("ssl.certificate.location", &self.kafka_ssl_certificate_location),
            ("ssl.key.location", &self.kafka_ssl_key_location),
            ("ssl.key.password", &self.kafka_ssl_key_password),
        ];
        for (property, value) in optional {
            if let Some(value) = value {
                config.set(property, value);
            }
        }
        let mut pass_through: Vec<(String, String)> =
            env.into_iter().filter(|(name, _)| name.starts_with(role.prefix())).collect();
        pass_through.sort();
        for (variable, value) in pass_through {
            let property = variable[role.prefix().len()..].to_ascii_lowercase().replace('_', ".");
            if role.guarded().contains(&property.as_str()) {
                return Err(KafkaSettingError::Guarded { variable, property });
            }
            if value.is_empty() {
                return Err(KafkaSettingError::EmptyPassThrough { variable });
            }
            config.set(property, value);
        }
        Ok(config)
    }

    /// The secrets these settings hold, for scrubbing error text.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        [&self.kafka_sasl_password, &self.kafka_ssl_key_password].into_iter().flatten().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram() -> KafkaSecurity {
        KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::SaslSsl,
            kafka_sasl_mechanism: Some(SaslMechanism::ScramSha512),
            kafka_sasl_username: Some("sluice".into()),
            kafka_sasl_password: Some("pw".into()),
            kafka_ssl_ca_location: Some("/etc/ca.pem".into()),
            ..KafkaSecurity::plaintext()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn security_settings_become_librdkafka_properties() {
        let config = scram().client_config_from("b:9093", Role::Producer, env(&[])).unwrap();
        assert_eq!(config.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("sluice"));
        assert_eq!(config.get("sasl.password"), Some("pw"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(config.get("ssl.key.location"), None);
        let plain = KafkaSecurity::plaintext().client_config_from("b:9092", Role::Consumer, env(&[])).unwrap();
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.mechanism"), None);
    }

    #[test]
    fn pass_through_goes_to_its_role_only() {
        let vars = env(&[
            ("KAFKA_PRODUCER_SOCKET_KEEPALIVE_ENABLE", "true"),
            ("KAFKA_CONSUMER_FETCH_MAX_BYTES", "1048576"),
            ("KAFKA_HOSTS", "ignored"),
        ]);
        let producer = KafkaSecurity::plaintext().client_config_from("b", Role::Producer, vars.clone()).unwrap();
        assert_eq!(producer.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(producer.get("fetch.max.bytes"), None);
        let consumer = KafkaSecurity::plaintext().client_config_from("b", Role::Consumer, vars).unwrap();
        assert_eq!(consumer.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(consumer.get("socket.keepalive.enable"), None);
    }

    #[test]
    fn properties_the_guarantee_rests_on_cannot_be_overridden() {
        for (var, role) in [
            ("KAFKA_PRODUCER_ACKS", Role::Producer),
            ("KAFKA_PRODUCER_ENABLE_IDEMPOTENCE", Role::Producer),
            ("KAFKA_CONSUMER_ENABLE_AUTO_COMMIT", Role::Consumer),
            ("KAFKA_CONSUMER_GROUP_ID", Role::Consumer),
        ] {
            let err = KafkaSecurity::plaintext().client_config_from("b", role, env(&[(var, "1")])).unwrap_err();
            assert!(matches!(err, KafkaSettingError::Guarded { .. }), "{var}: {err}");
        }
    }

    #[test]
    fn settings_that_cannot_be_honoured_are_refused() {
        let mut s = scram();
        s.kafka_sasl_mechanism = None;
        assert!(matches!(s.validate(), Err(KafkaSettingError::MechanismMissing { .. })));
        let mut s = scram();
        s.kafka_sasl_password = None;
        assert!(matches!(s.validate(), Err(KafkaSettingError::CredentialsMissing { .. })));
        let mut s = scram();
        s.kafka_security_protocol = SecurityProtocol::Ssl;
        assert!(matches!(s.validate(), Err(KafkaSettingError::MechanismUnused { .. })));
        let s = KafkaSecurity { kafka_ssl_ca_location: Some("/ca.pem".into()), ..KafkaSecurity::plaintext() };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL=plaintext does not use TLS (use ssl or sasl_ssl)"
        );
        let mut s = scram();
        s.kafka_security_protocol = SecurityProtocol::SaslPlaintext;
        assert!(matches!(s.validate(), Err(KafkaSettingError::TlsUnused { .. })));
    }

    #[test]
    fn secrets_are_listed_for_scrubbing() {
        assert_eq!(scram().secrets().collect::<Vec<_>>(), vec!["pw"]);
    }
}
