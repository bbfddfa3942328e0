//! HTTP server for Quire (hyper + tokio). Being built in the server issue; the crate exists so the
//! workspace layout is the one users were promised.
