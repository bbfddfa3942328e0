//! Quire's engine: GGUF loading, the Qwen3/Qwen2 model, KV cache, tokenizer, chat template, sampler and
//! the generation loop. It knows nothing of HTTP; the server and the CLI drive it.

pub mod attention;
pub mod chat;
pub mod config;
pub mod draft;
pub mod generate;
pub mod gguf;
pub mod grammar;
pub mod kv_cache;
pub mod memory;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod prepack;
pub mod reasoning;
pub mod sampler;
pub mod scheduler;
pub mod speculate;
pub mod threads;
pub mod tokenizer;
pub mod tools;
pub mod weights;
