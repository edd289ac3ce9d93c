//! Secrets at rest: API secrets are sealed with AES-256-GCM under a master key that never
//! enters the database. A stolen `keyguard.db` alone yields no usable secret.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The key that seals every API secret.
pub struct MasterKey(LessSafeKey);

impl MasterKey {
    /// Loads the master key: from the environment variable `env_name` when set (64 hex
    /// chars), else from `file`, which is created with a fresh random key and mode 0600
    /// when absent. A present but malformed key is an error, never silently replaced:
    /// replacing it would orphan every stored secret.
    pub fn load_or_create(env_name: &str, file: &Path) -> anyhow::Result<MasterKey> {
        if let Ok(hexkey) = std::env::var(env_name) {
            return Self::from_hex(hexkey.trim())
                .with_context(|| format!("environment variable {env_name}"));
        }
        match fs::read_to_string(file) {
            Ok(text) => {
                check_private(file)?;
                Self::from_hex(text.trim())
                    .with_context(|| format!("master key file {}", file.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| anyhow!("no system randomness"))?;
                write_private(file, hex::encode(bytes).as_bytes())?;
                Self::from_bytes(&bytes)
            }
            Err(e) => Err(e).with_context(|| format!("reading master key file {}", file.display())),
        }
    }

    fn from_hex(text: &str) -> anyhow::Result<MasterKey> {
        let bytes =
            hex::decode(text).map_err(|_| anyhow!("master key must be 64 hex characters"))?;
        if bytes.len() != 32 {
            bail!(
                "master key must be 64 hex characters (32 bytes), got {} bytes",
                bytes.len()
            );
        }
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> anyhow::Result<MasterKey> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| anyhow!("bad master key"))?;
        Ok(MasterKey(LessSafeKey::new(key)))
    }

    /// Seals `plaintext`; `context` (the key id) is bound as associated data so a sealed
    /// secret cannot be swapped onto another key's row.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow!("no system randomness"))?;
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            bail!("sealed secret too short");
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow!("bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| anyhow!("secret of {context} does not open with this master key"))?;
        Ok(plain.to_vec())
    }
}

/// Writes a new file readable by its owner only. Fails if the file exists, so two
/// processes racing on first start cannot each write a different key.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Refuses key files that others can read: a world-readable master key is a leaked one.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is accessible by group or others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// `n` random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow!("no system randomness"))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.key");
        let k = MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &file).unwrap();
        let sealed = k.seal("kg_a", b"top secret").unwrap();
        assert_eq!(k.open("kg_a", &sealed).unwrap(), b"top secret");
        assert!(k.open("kg_b", &sealed).is_err(), "bound to its key id");
        assert!(!sealed.windows(10).any(|w| w == b"top secret"));
        // Reloading the file gives the same key.
        let k2 = MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &file).unwrap();
        assert_eq!(k2.open("kg_a", &sealed).unwrap(), b"top secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &file).is_err());
        }
    }
}
