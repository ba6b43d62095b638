//! The OpenAPI document served at `/v1/openapi.json` (hand-written in `openapi.json`; a test
//! checks that it lists exactly the routes of `api::ROUTES`).

pub const DOCUMENT: &str = include_str!("openapi.json");
