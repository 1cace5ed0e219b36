//! Secret values. The `database` backend seals each value with AES-256-GCM
//! under the server's key, storing the id of the key with it, so that a key
//! rotation can re-seal everything while the old key still opens what it
//! sealed. The `ssm` backend reads and writes AWS SSM Parameter Store
//! SecureStrings through the AWS SDK, configured from the standard AWS
//! settings (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials), so a stand-in
//! such as moto works. No value ever appears in an error.
#![forbid(unsafe_code)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::Digest;

/// One encryption key and its public id (derived, not secret).
#[derive(Clone)]
pub struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    pub fn new(bytes: &[u8; 32]) -> Key {
        let digest = sha2::Sha256::digest(bytes);
        Key {
            id: format!("k{}", &hex::encode(digest)[..12]),
            cipher: Aes256Gcm::new_from_slice(bytes).expect("a 32-byte key"),
        }
    }

    /// The key's id, stored beside every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "it was encrypted with key {key_id}, which this server does not have: start the server with that key in SECRETS_ENCRYPTION_KEY or SECRETS_PREVIOUS_KEYS, or set the secret's value again"
    )]
    UnknownKey { key_id: String },
    #[error(
        "it does not decrypt with key {key_id}: the stored value was altered or belongs to another secret; set the secret's value again"
    )]
    Corrupt { key_id: String },
}

/// The current key (seals) and earlier ones (still open what they sealed).
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl Keyring {
    pub fn new(current: Key, previous: Vec<Key>) -> Keyring {
        Keyring { current, previous }
    }

    pub fn current(&self) -> &Key {
        &self.current
    }

    /// Seals `value`, bound to the secret's `name` (a value copied onto
    /// another secret's row does not open).
    pub fn seal(&self, name: &str, value: &str) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: value.as_bytes(), aad: name.as_bytes() })
            .expect("AES-GCM encryption of an in-memory value cannot fail");
        Sealed { ciphertext, nonce: nonce.to_vec(), key_id: self.current.id.clone() }
    }

    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String, SealError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey { key_id: sealed.key_id.clone() })?;
        let corrupt = || SealError::Corrupt { key_id: sealed.key_id.clone() };
        let nonce: [u8; 12] = sealed.nonce.as_slice().try_into().map_err(|_| corrupt())?;
        let plain = key
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: &sealed.ciphertext, aad: name.as_bytes() })
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    /// Whether `sealed` should be re-sealed under the current key.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }
}

/// Where SSM is and who calls it, from the standard AWS settings.
#[derive(Clone, Default)]
pub struct AwsSettings {
    /// `AWS_ENDPOINT_URL_SSM` or `AWS_ENDPOINT_URL`: a stand-in's address.
    pub endpoint_url: Option<String>,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`; without them
    /// the SDK's default chain (profile, instance role, ...) is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials are never printed.
        f.debug_struct("AwsSettings")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "(hidden)"))
            .field("session_token", &self.session_token.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl AwsSettings {
    /// Reads the settings through `env` (the server's environment).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> AwsSettings {
        let get = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()));
        AwsSettings {
            endpoint_url: get(&["AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL"]),
            region: get(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            access_key_id: get(&["AWS_ACCESS_KEY_ID"]),
            secret_access_key: get(&["AWS_SECRET_ACCESS_KEY"]),
            session_token: get(&["AWS_SESSION_TOKEN"]),
        }
    }
}

/// Why an SSM call failed, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsmError {
    #[error("the SSM parameter {path} does not exist: create it, or give the secret a value so Viberglass creates it")]
    NotFound { path: String },
    #[error(
        "AWS refused access to the SSM parameter {path} ({detail}): allow ssm:GetParameter, ssm:PutParameter and ssm:DeleteParameter (and kms:Decrypt for SecureStrings) to the server's AWS identity"
    )]
    AccessDenied { path: String, detail: String },
    #[error(
        "the SSM parameter {path} already exists and Viberglass did not create it: declare the secret without a value to use it as it is, or choose another path"
    )]
    Exists { path: String },
    #[error(
        "no AWS credentials for SSM: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role for the server"
    )]
    NoCredentials,
    #[error("cannot reach SSM{endpoint}: {detail}; check AWS_REGION / AWS_ENDPOINT_URL and the network")]
    Unreachable { endpoint: String, detail: String },
    #[error("SSM failed on {path}: {detail}")]
    Other { path: String, detail: String },
}

/// AWS SSM Parameter Store.
#[derive(Clone)]
pub struct Ssm {
    client: aws_sdk_ssm::Client,
    endpoint: Option<String>,
}

impl Ssm {
    pub async fn connect(settings: &AwsSettings) -> Ssm {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_ssm::config::Credentials::new(
                id,
                secret,
                settings.session_token.clone(),
                None,
                "viberglass-environment",
            ));
        }
        let config = loader.load().await;
        let mut builder = aws_sdk_ssm::config::Builder::from(&config);
        if config.region().is_none() {
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        Ssm { client: aws_sdk_ssm::Client::from_conf(builder.build()), endpoint: settings.endpoint_url.clone() }
    }

    fn classify<E, R>(&self, path: &str, err: aws_sdk_ssm::error::SdkError<E, R>) -> SsmError
    where
        E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        use aws_sdk_ssm::error::SdkError;
        let endpoint = self.endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default();
        match &err {
            SdkError::DispatchFailure(failure) => {
                let detail = failure
                    .as_other()
                    .map(|e| format!("{e:?}"))
                    .or_else(|| failure.as_connector_error().map(|e| root_cause(e)))
                    .unwrap_or_else(|| "the request could not be sent".into());
                if detail.to_lowercase().contains("credential") {
                    return SsmError::NoCredentials;
                }
                SsmError::Unreachable { endpoint, detail }
            }
            SdkError::TimeoutError(_) => SsmError::Unreachable { endpoint, detail: "timed out".into() },
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or_default();
                let detail = format!("{code}: {}", e.message().unwrap_or_default());
                match code {
                    "ParameterNotFound" => SsmError::NotFound { path: path.to_owned() },
                    "ParameterAlreadyExists" => SsmError::Exists { path: path.to_owned() },
                    "AccessDeniedException"
                    | "AccessDenied"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException" => SsmError::AccessDenied { path: path.to_owned(), detail },
                    _ => SsmError::Other { path: path.to_owned(), detail },
                }
            }
            SdkError::ConstructionFailure(_) => {
                let text = root_cause(&err);
                if text.to_lowercase().contains("credential") {
                    SsmError::NoCredentials
                } else {
                    SsmError::Other { path: path.to_owned(), detail: text }
                }
            }
            _ => SsmError::Other { path: path.to_owned(), detail: root_cause(&err) },
        }
    }

    /// The decrypted value of a parameter.
    pub async fn get(&self, path: &str) -> Result<String, SsmError> {
        let out = self
            .client
            .get_parameter()
            .name(path)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.classify(path, e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_owned)
            .ok_or_else(|| SsmError::Other { path: path.to_owned(), detail: "the parameter has no value".into() })
    }

    /// Writes a SecureString parameter: `overwrite` false creates it and
    /// fails with `Exists` when something is already at the path.
    pub async fn put(&self, path: &str, value: &str, overwrite: bool) -> Result<(), SsmError> {
        self.client
            .put_parameter()
            .name(path)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(overwrite)
            .send()
            .await
            .map_err(|e| self.classify(path, e))?;
        Ok(())
    }

    /// Deletes a parameter; one already gone is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), SsmError> {
        match self.client.delete_parameter().name(path).send().await.map_err(|e| self.classify(path, e)) {
            Ok(_) | Err(SsmError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An SSM parameter path for a secret: `prefix` + name, e.g. `/viberglass/GITHUB_TOKEN`.
pub fn ssm_path(prefix: &str, name: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    format!("{prefix}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: u8, previous: &[u8]) -> Keyring {
        Keyring::new(Key::new(&[current; 32]), previous.iter().map(|b| Key::new(&[*b; 32])).collect())
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_name_and_key() {
        let keys = ring(1, &[]);
        let sealed = keys.seal("GITHUB_TOKEN", "ghp_value");
        assert_ne!(sealed.ciphertext, b"ghp_value");
        assert_eq!(keys.open("GITHUB_TOKEN", &sealed).unwrap(), "ghp_value");
        assert!(matches!(keys.open("OTHER", &sealed), Err(SealError::Corrupt { .. })));
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(keys.open("GITHUB_TOKEN", &tampered), Err(SealError::Corrupt { .. })));
        // Two seals of one value differ (fresh nonce).
        assert_ne!(keys.seal("GITHUB_TOKEN", "ghp_value").ciphertext, sealed.ciphertext);
    }

    #[test]
    fn an_old_key_still_opens_what_it_sealed_after_rotation() {
        let old = ring(1, &[]);
        let sealed = old.seal("A", "v");
        let rotated = ring(2, &[1]);
        assert!(rotated.is_stale(&sealed));
        assert_eq!(rotated.open("A", &sealed).unwrap(), "v");
        let without_old = ring(2, &[]);
        let err = without_old.open("A", &sealed).unwrap_err();
        assert!(err.to_string().contains("SECRETS_PREVIOUS_KEYS"), "{err}");
        assert!(!err.to_string().contains('v') || !err.to_string().contains("\"v\""));
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        assert_eq!(Key::new(&[7; 32]).id(), Key::new(&[7; 32]).id());
        assert_ne!(Key::new(&[7; 32]).id(), Key::new(&[8; 32]).id());
        assert_eq!(ssm_path("/viberglass/", "TOKEN"), "/viberglass/TOKEN");
    }
}
