//! The output and error files of an offline batch run, appended to a line at a time and read back on the
//! next run, so that a run stopped anywhere (Ctrl-C, `kill -9`, a power cut) continues where it was: a
//! `custom_id` with a line in either file is done and never written again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// One file of result lines.
pub struct ResultFile {
    path: PathBuf,
    file: File,
}

impl ResultFile {
    /// Opens `path` for appending (creating it), drops a last line cut short by a crash, and adds the
    /// `custom_id` of every complete line to `done`.
    pub fn open(path: &Path, done: &mut HashSet<String>) -> Result<ResultFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut kept = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                break;
            }
            let v: Value = serde_json::from_slice(&line).with_context(|| {
                format!("{} has a line that is not JSON; is it a batch result file?", path.display())
            })?;
            let id = v.get("custom_id").and_then(Value::as_str).with_context(|| {
                format!("{} has a line without custom_id; is it a batch result file?", path.display())
            })?;
            done.insert(id.to_string());
            kept += n as u64;
        }
        drop(reader);
        if file.metadata()?.len() > kept {
            // the tail of a line being written when the last run stopped
            file.set_len(kept)?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(ResultFile { path: path.to_path_buf(), file })
    }

    /// Appends one line and waits until it is on disk.
    pub fn append(&mut self, v: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(v)?;
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_dropped_and_complete_ones_count_as_done() {
        let dir = std::env::temp_dir().join(format!("quire-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        std::fs::write(
            &path,
            "{\"custom_id\": \"a\"}\n{\"custom_id\": \"b\"}\n{\"custom_id\": \"c\", \"resp",
        )
        .unwrap();
        let mut done = HashSet::new();
        let mut f = ResultFile::open(&path, &mut done).unwrap();
        assert_eq!(done, HashSet::from(["a".to_string(), "b".to_string()]));
        f.append(&serde_json::json!({"custom_id": "c"})).unwrap();
        drop(f);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"custom_id\": \"a\"}\n{\"custom_id\": \"b\"}\n{\"custom_id\":\"c\"}\n");
        std::fs::write(&path, "not json\n").unwrap();
        assert!(ResultFile::open(&path, &mut done).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
