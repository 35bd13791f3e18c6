//! WireGuard keys: flannel's key file and the base64 text form `wg` and flanneld use.
//!
//! The private key lives in the file `WIREGUARD_KEY_FILE` names (flannel's default `/run/flannel/wgkey`), as 44
//! characters of base64 with no newline, which is how flanneld writes it. It is created once and reused, so a
//! restarted host keeps its public key; deleting the file and restarting rotates it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

/// flannel's key file when `WIREGUARD_KEY_FILE` is not set.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// The environment variable flanneld reads the key file's path from.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";
pub const KEY_LEN: usize = 32;

/// A 32-byte Curve25519 key (private, public or preshared).
pub type Key = [u8; KEY_LEN];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} {text:?} is not a WireGuard key (44 characters of base64 for 32 bytes)")]
    BadText { what: &'static str, text: String },
    #[error("WireGuard key file {path}: {what}: {source}")]
    File {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("WireGuard key file {path}: {source}")]
    BadFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("generating a WireGuard private key: {0}")]
    Random(#[source] io::Error),
}

/// Parses a key from its base64 text (`what` names it in the error: "PSK", "PublicKey"). Surrounding whitespace is
/// ignored, so a file written by `wg genkey` (which ends in a newline) reads too.
pub fn parse_key(what: &'static str, text: &str) -> Result<Key, KeyError> {
    let bad = || KeyError::BadText { what, text: text.to_string() };
    let bytes = STANDARD.decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

pub fn encode_key(key: &Key) -> String {
    STANDARD.encode(key)
}

/// The public key of `private` (X25519 with the base point; clamping is part of the function).
pub fn public_key(private: &Key) -> Key {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// A new private key, clamped as `wg genkey` and flannel's key generator store it.
pub fn generate_private_key() -> Result<Key, KeyError> {
    let mut key = [0u8; KEY_LEN];
    let mut filled = 0;
    while filled < KEY_LEN {
        // SAFETY: getrandom writes at most the given length into the buffer's remaining part.
        let n = unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), KEY_LEN - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(KeyError::Random(e));
        }
        filled += n as usize;
    }
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    Ok(key)
}

/// The key file's path: `WIREGUARD_KEY_FILE` if set (as flanneld), else flannel's default.
pub fn key_file_path() -> PathBuf {
    key_file_path_from(std::env::var_os(KEY_FILE_ENV).map(PathBuf::from))
}

fn key_file_path_from(env: Option<PathBuf>) -> PathBuf {
    env.filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

/// Whether the private key was read from the file or created in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Read,
    Created,
}

/// Reads the private key from `path`, or creates the file (and its directory) with a new key, mode 0600.
pub fn load_or_create(path: &Path) -> Result<(Key, KeyOrigin), KeyError> {
    let file_err = |what: &'static str| move |source| KeyError::File { path: path.to_path_buf(), what, source };
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = parse_key("private key", &text)
                .map_err(|e| KeyError::BadFile { path: path.to_path_buf(), source: Box::new(e) })?;
            return Ok((key, KeyOrigin::Read));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_err("reading")(e)),
    }
    let key = generate_private_key()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(file_err("creating its directory"))?;
    }
    // create_new: two starts racing must not overwrite each other's key; the loser reads the winner's.
    let mut file = match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return load_or_create(path),
        Err(e) => return Err(file_err("creating")(e)),
    };
    // The umask may have narrowed the mode further; set exactly 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(file_err("setting mode 0600"))?;
    file.write_all(encode_key(&key).as_bytes()).map_err(file_err("writing"))?;
    file.sync_all().map_err(file_err("syncing"))?;
    Ok((key, KeyOrigin::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_bad_text_names_the_input() {
        let key = [7u8; 32];
        let text = encode_key(&key);
        assert_eq!(text.len(), 44);
        assert_eq!(parse_key("PSK", &format!("{text}\n")).unwrap(), key);
        let err = parse_key("PSK", "abc").unwrap_err();
        assert_eq!(err.to_string(), "PSK \"abc\" is not a WireGuard key (44 characters of base64 for 32 bytes)");
        // 33 bytes of valid base64 is still no key.
        assert!(parse_key("PSK", &STANDARD.encode([1u8; 33])).is_err());
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private: Key = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public: Key = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(public_key(&private), public);
    }

    fn hex(s: &str) -> Key {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        k
    }

    #[test]
    fn generated_keys_are_clamped_and_differ() {
        let a = generate_private_key().unwrap();
        let b = generate_private_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a[0] & 7, 0);
        assert_eq!(a[31] & 0xc0, 0x40);
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("weft-wgkey-{}", std::process::id()));
        let path = dir.join("sub/wgkey");
        let _ = fs::remove_dir_all(&dir);
        let (key, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), encode_key(&key), "flanneld's format: base64, no newline");
        assert_eq!(load_or_create(&path).unwrap(), (key, KeyOrigin::Read));
        fs::write(&path, "not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("WireGuard key file {}", path.display())), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_file_path_follows_the_environment_variable() {
        assert_eq!(key_file_path_from(None), PathBuf::from("/run/flannel/wgkey"));
        assert_eq!(key_file_path_from(Some("".into())), PathBuf::from("/run/flannel/wgkey"));
        assert_eq!(key_file_path_from(Some("/etc/wg/key".into())), PathBuf::from("/etc/wg/key"));
    }
}
