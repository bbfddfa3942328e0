//! Batch jobs: OpenAI's batch format (JSONL requests in, JSONL results out), run behind interactive
//! requests. [`input`] validates and parses a file, [`runner`] runs its requests through the same code as
//! the HTTP endpoints, [`provenance`] says how each text was made, [`store`] and [`service`] are the
//! server's durable batches behind [`api`] (`/v1/files`, `/v1/batches`), and [`files`] + [`offline`] are
//! `quire batch`; [`review`] is the editors' side (verdicts, edits, exports); [`data`] makes a batch file from a template and a CSV or JSONL file of rows.

pub mod api;
pub mod data;
pub mod files;
pub mod input;
pub mod offline;
pub mod provenance;
pub mod review;
pub mod runner;
pub mod service;
pub mod store;
