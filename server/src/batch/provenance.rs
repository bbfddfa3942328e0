//! How a batch output was made, on every output line (extension field `quire`), so an editor can say
//! which model file, settings and seed wrote a text: the model file's name, sha256 and quantization, the
//! Quire version, the sampler settings and the seed actually used, and the template and row it came from.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// What is the same for every line of a run.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub file: String,
    pub sha256: String,
    pub quant: String,
}

/// The sampling fields of a body that decide its text, as they were run.
const SETTINGS: [&str; 12] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "response_format",
];

impl ModelInfo {
    /// `path`'s name and quantization, and its sha256 from the cache file beside it (`<model>.sha256`,
    /// trusted while the model's size and modification time are those it records), else computed now
    /// (about a second per GB) and written there when the folder is writable.
    pub fn of(path: &Path, quant: String) -> anyhow::Result<ModelInfo> {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(ModelInfo { file, sha256: sha256_cached(path)?, quant })
    }

    /// The `quire` field of an output line for `body` (as run, seed included) from `template`/`row`.
    pub fn stamp(&self, body: &Value, template: Option<(&str, usize)>) -> Value {
        let mut settings = Map::new();
        for k in SETTINGS {
            if let Some(v) = body.get(k) {
                settings.insert(k.into(), v.clone());
            }
        }
        let mut v = json!({
            "model": self.file,
            "model_sha256": self.sha256,
            "quant": self.quant,
            "quire_version": env!("CARGO_PKG_VERSION"),
            "seed": body.get("seed"),
            "sampling": settings,
        });
        if let Some((name, row)) = template {
            v["template"] = json!(name);
            v["row"] = json!(row);
        }
        v
    }
}

/// The seed a request without one runs with: from its `custom_id`, so that a rerun (or a resumed batch)
/// writes the same text, and in 0..2^31 so that every client can send it back.
pub fn seed_for(custom_id: &str) -> u64 {
    // FNV-1a: stable across versions and platforms, unlike std's hasher
    let h =
        custom_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    h % (1 << 31)
}

fn cache_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn sha256_cached(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime =
        meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let stamp = format!("{} {mtime}", meta.len());
    let cache = cache_path(path);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((hash, rest)) = text.trim().split_once("  ") {
            if rest == stamp && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(hash.to_string());
            }
        }
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = std::fs::write(&cache, format!("{hash}  {stamp}\n")) {
        tracing::info!("cannot cache the model's sha256 in {}: {e}", cache.display());
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_cached_beside_the_file_and_redone_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("quire-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_cached(&model).unwrap(), abc);
        assert!(std::fs::read_to_string(cache_path(&model)).unwrap().starts_with(abc));
        assert_eq!(sha256_cached(&model).unwrap(), abc, "from the cache");
        std::fs::write(&model, b"abcd").unwrap();
        assert_ne!(sha256_cached(&model).unwrap(), abc, "a changed file is hashed again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seeds_are_stable_and_small() {
        assert_eq!(seed_for("row-1"), seed_for("row-1"));
        assert_ne!(seed_for("row-1"), seed_for("row-2"));
        assert!((0..1000).all(|i| seed_for(&i.to_string()) < 1 << 31));
    }
}
