//! Signed checkpoints: the server signs (Ed25519) each tenant's chain head and publishes it to a
//! directory the database cannot rewrite (mount an object-store sync, another volume, a WORM
//! bucket). Verification compares the chain with the latest published checkpoint, so truncation,
//! rollback, a rewrite of every hash or a restore of an old backup is detected even when the
//! database's own chain head was moved to match. See the README's threat model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use audit_api::checkpoint::{self, PublicKeyInfo, SignedCheckpoint};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::chain;
use crate::store::{Store, StoreError};

/// The signing key and where checkpoints are published.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
    dir: Option<PathBuf>,
    /// Also published to the audit topic (with Kafka configured).
    kafka: Option<crate::outbox::kafka::CheckpointStream>,
}

/// Why a checkpoint was not signed.
#[derive(Debug)]
pub enum CheckpointError {
    /// The chain no longer contains the latest published checkpoint: signing its current head
    /// would hide that (rollback, tail cut, restore of an old backup, rewrite).
    Diverged(String),
    Store(StoreError),
    Io(anyhow::Error),
}

impl From<StoreError> for CheckpointError {
    fn from(e: StoreError) -> Self {
        CheckpointError::Store(e)
    }
}

impl Signer {
    /// Load a PEM PKCS#8 Ed25519 private key (`openssl genpkey -algorithm ed25519 -out key.pem`).
    pub fn from_pem_file(path: &Path, dir: Option<PathBuf>) -> anyhow::Result<Signer> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the checkpoint signing key {}", path.display()))?;
        if !text.contains("-----BEGIN PRIVATE KEY-----") {
            bail!("{}: expected a PEM PKCS#8 Ed25519 private key (BEGIN PRIVATE KEY)", path.display());
        }
        let der = checkpoint::pem_body(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display()))?;
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).with_context(|| format!("creating the checkpoint directory {}", d.display()))?;
        }
        let key_id = checkpoint::key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id, dir, kafka: None })
    }

    /// Publish every new checkpoint to the Kafka audit topic too (issue 25).
    pub fn with_kafka(mut self, config: &crate::config::KafkaConfig, stream: &str) -> anyhow::Result<Signer> {
        self.kafka = Some(crate::outbox::kafka::CheckpointStream::new(config, stream)?);
        Ok(self)
    }

    /// A new PEM PKCS#8 Ed25519 private key (for local runs and tests).
    pub fn generate_pem() -> anyhow::Result<String> {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
        Ok(format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der.as_ref())))
    }

    pub fn public_key(&self) -> PublicKeyInfo {
        let raw = self.pair.public_key().as_ref();
        PublicKeyInfo {
            algorithm: checkpoint::ALGORITHM.into(),
            key_id: self.key_id.clone(),
            public_key: STANDARD.encode(raw),
            pem: checkpoint::public_key_pem(raw),
        }
    }

    /// Check a checkpoint's signature with this server's key (a client-supplied checkpoint, a
    /// stored verified position).
    pub fn check(&self, cp: &SignedCheckpoint) -> Result<(), String> {
        cp.verify_signature(self.pair.public_key().as_ref())
    }

    /// Sign (tenant, sequence, hash) now, without publishing it.
    pub fn sign(&self, tenant_id: &str, sequence: i64, hash: &str) -> SignedCheckpoint {
        self.sign_at(tenant_id, sequence, hash, &chain::format_timestamp(chain::now()))
    }

    /// Sign (tenant, sequence, hash) as of `issued_at` (a receipt: its event's timestamp, so a
    /// replayed receipt carries the same signature; Ed25519 signatures are deterministic).
    pub fn sign_at(&self, tenant_id: &str, sequence: i64, hash: &str, issued_at: &str) -> SignedCheckpoint {
        let mut cp = SignedCheckpoint {
            tenant_id: tenant_id.to_owned(),
            sequence,
            hash: hash.to_owned(),
            issued_at: issued_at.to_owned(),
            key_id: self.key_id.clone(),
            signature: String::new(),
        };
        cp.signature = STANDARD.encode(self.pair.sign(cp.signed_text().as_bytes()).as_ref());
        cp
    }

    fn tenant_dir(&self, tenant_id: &str) -> Option<PathBuf> {
        // Tenant ids are [A-Za-z0-9._:@-]; the prefix keeps "." and ".." ordinary names.
        self.dir.as_ref().map(|d| d.join(format!("t_{tenant_id}")))
    }

    /// The latest checkpoint published for a tenant, its signature checked.
    pub fn latest_published(&self, tenant_id: &str) -> anyhow::Result<Option<SignedCheckpoint>> {
        let Some(dir) = self.tenant_dir(tenant_id) else { return Ok(None) };
        let path = dir.join("latest.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let cp: SignedCheckpoint =
            serde_json::from_str(&text).with_context(|| format!("{} is not a checkpoint", path.display()))?;
        cp.verify_signature(self.pair.public_key().as_ref()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if cp.tenant_id != tenant_id {
            bail!("{} is a checkpoint of tenant {:?}", path.display(), cp.tenant_id);
        }
        Ok(Some(cp))
    }

    /// Write a checkpoint as `<seq>-<time>.json` and as `latest.json` (atomically, by rename).
    fn publish(&self, cp: &SignedCheckpoint) -> anyhow::Result<()> {
        let Some(dir) = self.tenant_dir(&cp.tenant_id) else { return Ok(()) };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(cp)? + "\n";
        let name = format!("{:020}-{}.json", cp.sequence, cp.issued_at.replace(':', ""));
        for file in [name.as_str(), "latest.json"] {
            let tmp = dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("publishing {file} in {}", dir.display()))?;
        }
        Ok(())
    }

    /// Sign and publish the current head of a tenant, after checking that the chain still
    /// contains the latest published checkpoint (else refuse: see [`CheckpointError::Diverged`]).
    /// `head` is (sequence, hash) or None for a tenant without events.
    pub async fn checkpoint(
        &self,
        store: &Store,
        tenant_id: &str,
        head: Option<(i64, String)>,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let (sequence, hash) = head.unwrap_or((0, chain::genesis().to_owned()));
        let latest = self.latest_published(tenant_id).map_err(CheckpointError::Io)?;
        if let Some(prev) = &latest {
            if sequence < prev.sequence {
                return Err(CheckpointError::Diverged(format!(
                    "the chain head ({sequence}) is behind the published checkpoint of {} ({}): events were removed",
                    prev.issued_at, prev.sequence
                )));
            }
            if prev.sequence > 0 {
                // Missing and different are told apart, as `/integrity/verify` does.
                match store.hash_at(tenant_id, prev.sequence).await? {
                    None => {
                        return Err(CheckpointError::Diverged(format!(
                            "event {} of the published checkpoint of {} is missing from the chain: events were removed",
                            prev.sequence, prev.issued_at
                        )));
                    }
                    Some(h) if h != prev.hash => {
                        return Err(CheckpointError::Diverged(format!(
                            "event {} no longer matches the published checkpoint of {}: the chain was rewritten",
                            prev.sequence, prev.issued_at
                        )));
                    }
                    Some(_) => {}
                }
            }
            if prev.sequence == sequence && prev.hash == hash {
                return Ok(prev.clone());
            }
        }
        let cp = self.sign(tenant_id, sequence, &hash);
        // An empty chain has nothing to anchor: it is signed but not published, so that asking
        // for any name creates no directory (nor a Kafka record) for it.
        if sequence == 0 {
            return Ok(cp);
        }
        self.publish(&cp).map_err(CheckpointError::Io)?;
        if let Some(kafka) = &self.kafka {
            kafka.send(&cp);
        }
        Ok(cp)
    }
}

/// Publish a checkpoint of every tenant whose head moved, every `every`.
pub async fn publish_periodically(signer: Arc<Signer>, store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let heads = match store.heads().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoints: reading chain heads failed");
                continue;
            }
        };
        for (tenant, sequence, hash) in heads {
            match signer.checkpoint(&store, &tenant, Some((sequence, hash))).await {
                Ok(_) => {}
                Err(CheckpointError::Diverged(m)) => {
                    tracing::error!(tenant, problem = %m, "checkpoints: the chain diverged from its published checkpoint")
                }
                Err(CheckpointError::Store(e)) => tracing::warn!(tenant, error = %e, "checkpoints: database error"),
                Err(CheckpointError::Io(e)) => {
                    tracing::error!(tenant, error = %format!("{e:#}"), "checkpoints: publishing failed")
                }
            }
        }
    }
}
