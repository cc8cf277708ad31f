//! The relay's HTTP/JSON API as data, defined in the core (`sessionkey_proto::msg::api`, so
//! that the relay needs only the core) and re-exported here for the client.

pub use crate::proto::msg::api::*;
