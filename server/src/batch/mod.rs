//! Batch jobs: OpenAI's batch format (JSONL requests in, JSONL results out), run behind interactive
//! requests. [`input`] validates and parses a file, [`runner`] runs its requests through the same code as
//! the HTTP endpoints, [`provenance`] says how each text was made, [`files`] keeps the result files a rerun
//! continues, and [`offline`] is `quire batch`.

pub mod files;
pub mod input;
pub mod offline;
pub mod provenance;
pub mod runner;
