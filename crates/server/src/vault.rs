//! Secret values: writing them (sealed in the database, or to SSM) and
//! reading them (from the environment, the database or SSM), with messages
//! that say exactly what is wrong. Values never reach a log or a response.

use std::sync::Arc;

use tokio::sync::OnceCell;
use viberglass_domain::{Failure, FailureLayer, Secret, SecretBackend};
use viberglass_secrets::{AwsSettings, Key, Keyring, Ssm};
use viberglass_store::SealedValue;

use crate::app::EnvLookup;
use crate::config::{Config, EncryptionKey};

pub struct Vault {
    keyring: Keyring,
    ssm_prefix: String,
    ssm: OnceCell<Ssm>,
}

impl Vault {
    pub fn new(config: &Config, key: &EncryptionKey) -> Vault {
        let previous = config.previous_keys.iter().map(|k| Key::new(k.bytes())).collect();
        Vault {
            keyring: Keyring::new(Key::new(key.bytes()), previous),
            ssm_prefix: config.ssm_prefix.clone(),
            ssm: OnceCell::new(),
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The SSM client, configured on first use from the server's environment.
    async fn ssm(&self, env: &EnvLookup) -> &Ssm {
        self.ssm.get_or_init(|| async { Ssm::connect(&AwsSettings::from_env(|name| env(name))).await }).await
    }

    /// Where an `ssm` secret's parameter lives.
    pub fn ssm_path(&self, secret_name: &str, reference: Option<&str>) -> String {
        reference.map(str::to_owned).unwrap_or_else(|| viberglass_secrets::ssm_path(&self.ssm_prefix, secret_name))
    }

    pub fn seal(&self, name: &str, value: &str) -> SealedValue {
        let sealed = self.keyring.seal(name, value);
        SealedValue { ciphertext: sealed.ciphertext, nonce: sealed.nonce, key_id: sealed.key_id }
    }

    /// Writes an SSM parameter; `overwrite` false only creates one.
    pub async fn put_ssm(&self, env: &EnvLookup, path: &str, value: &str, overwrite: bool) -> Result<(), String> {
        self.ssm(env).await.put(path, value, overwrite).await.map_err(|e| e.to_string())
    }

    pub async fn delete_ssm(&self, env: &EnvLookup, path: &str) -> Result<(), String> {
        self.ssm(env).await.delete(path).await.map_err(|e| e.to_string())
    }

    /// Reads a secret's value, or says why it cannot be read (without the value).
    pub async fn read(
        &self,
        store: &viberglass_store::Store,
        env: &EnvLookup,
        secret: &Secret,
    ) -> Result<String, String> {
        match secret.backend {
            SecretBackend::Env => {
                let variable = secret.reference.clone().unwrap_or_else(|| secret.name.clone());
                match env(&variable) {
                    Some(value) if !value.is_empty() => Ok(value),
                    _ => Err(format!(
                        "the environment variable {variable} is not set for the viberglass server: set it, then restart the server"
                    )),
                }
            }
            SecretBackend::Database => {
                let sealed = store
                    .sealed_secret_value(&secret.name)
                    .await
                    .map_err(|e| format!("its stored value cannot be read: {e}"))?
                    .ok_or_else(|| "it has no stored value: set one (PATCH the secret with a `value`)".to_owned())?;
                let sealed = viberglass_secrets::Sealed {
                    ciphertext: sealed.ciphertext,
                    nonce: sealed.nonce,
                    key_id: sealed.key_id,
                };
                self.keyring.open(&secret.name, &sealed).map_err(|e| e.to_string())
            }
            SecretBackend::Ssm => {
                let path = self.ssm_path(&secret.name, secret.reference.as_deref());
                self.ssm(env).await.get(&path).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Reads the secret `name` for `whose` (e.g. "clanker claude"), as a job needs it.
pub async fn resolve(state: &crate::AppState, name: &str, whose: &str) -> Result<String, Failure> {
    let secret = state.store.get_secret_by_name(name).await.map_err(|_| {
        Failure::new(
            FailureLayer::Secrets,
            "secret_missing",
            format!(
                "{whose} names the secret {name}, which does not exist: declare it on the Secrets page, then re-run"
            ),
            false,
        )
    })?;
    state.vault.read(&state.store, &state.env, &secret).await.map_err(|why| {
        Failure::new(
            FailureLayer::Secrets,
            "secret_unresolved",
            format!("the secret {name} of {whose} ({} backend) cannot be read: {why}; then re-run", secret.backend),
            secret.backend == SecretBackend::Ssm,
        )
    })
}

pub type SharedVault = Arc<Vault>;

/// What `viberglass secrets rotate-key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub new_key_id: String,
    pub resealed: usize,
    pub already_current: usize,
    /// Secrets no known key opens, by name, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// Re-encrypts every stored secret under `new_key`. Values sealed under the
/// configured key or any previous key are opened and sealed again; each
/// write is guarded by the key id it read, so a concurrent change wins.
pub async fn rotate_key(
    store: &viberglass_store::Store,
    config: &Config,
    current: &EncryptionKey,
    new_key: &EncryptionKey,
) -> Result<Rotation, viberglass_store::StoreError> {
    let mut known: Vec<Key> = vec![Key::new(current.bytes())];
    known.extend(config.previous_keys.iter().map(|k| Key::new(k.bytes())));
    let opener = Keyring::new(Key::new(new_key.bytes()), known);
    let sealer = Keyring::new(Key::new(new_key.bytes()), Vec::new());
    let mut rotation = Rotation {
        new_key_id: sealer.current().id().to_owned(),
        resealed: 0,
        already_current: 0,
        unreadable: Vec::new(),
    };
    for (id, name, stored) in store.sealed_secrets().await? {
        if let Some(fresh) = reseal(&opener, &sealer, &name, &stored, &mut rotation)
            && store.reseal_secret(id, &stored, fresh).await?
        {
            rotation.resealed += 1;
        }
    }
    // Inbound webhook configurations' shared secrets, sealed under the name `webhook:<id>`.
    for (id, stored) in store.webhook_secrets().await? {
        if let Some(fresh) = reseal(&opener, &sealer, &format!("webhook:{id}"), &stored, &mut rotation) {
            store.reseal_webhook_secret(id, &fresh).await?;
            rotation.resealed += 1;
        }
    }
    // Outbound webhook subscriptions' credentials, sealed under the name `subscription:<id>`.
    for (id, stored) in store.subscription_credentials().await? {
        if let Some(fresh) = reseal(&opener, &sealer, &format!("subscription:{id}"), &stored, &mut rotation)
            && store.reseal_subscription(id, &stored, &fresh).await?
        {
            rotation.resealed += 1;
        }
    }
    Ok(rotation)
}

/// One value's rotation: `None` when it is current already or no known key opens it (counted in `rotation`),
/// else the value sealed under the new key.
fn reseal(
    opener: &Keyring,
    sealer: &Keyring,
    name: &str,
    stored: &SealedValue,
    rotation: &mut Rotation,
) -> Option<SealedValue> {
    let sealed = viberglass_secrets::Sealed {
        ciphertext: stored.ciphertext.clone(),
        nonce: stored.nonce.clone(),
        key_id: stored.key_id.clone(),
    };
    if !sealer.is_stale(&sealed) {
        rotation.already_current += 1;
        return None;
    }
    match opener.open(name, &sealed) {
        Ok(value) => {
            let fresh = sealer.seal(name, &value);
            Some(SealedValue { ciphertext: fresh.ciphertext, nonce: fresh.nonce, key_id: fresh.key_id })
        }
        Err(e) => {
            rotation.unreadable.push((name.to_owned(), e.to_string()));
            None
        }
    }
}
