//! Entry points for the fuzz targets in `tests/fuzz` and their corpus
//! replay test; not an API: the Engine API's request bodies and `filters`
//! parameter, read as the handlers read them.

use common::secret::Kind;
use serde_json::Value;

use super::{files, filters::Filters, networks, nodes, parse_body, spec};

/// The Engine API target: a NUL byte and then a `filters` parameter, or
/// else a request body.
pub fn engine_input(data: &[u8]) {
    match data.split_first() {
        Some((0, rest)) => filters(&String::from_utf8_lossy(rest)),
        _ => engine_body(data),
    }
}

/// A request body of the Engine API: parsed as [`super::body`] does, then
/// read as each handler that takes a body reads it. A ServiceSpec that
/// reads must read the same after a trip through its Engine rendering.
pub fn engine_body(bytes: &[u8]) {
    let Ok(doc) = parse_body(bytes) else { return };
    let _ = spec::ignored(&doc);
    if let Ok(s) = spec::from_engine(&doc) {
        let _ = s.validate();
        let _ = spec::engine_view_with_defaults(&s);
        let mut plain = s.clone();
        plain.engine_spec = None;
        let rendered = spec::to_engine(&plain);
        let mut back = spec::from_engine(&rendered).expect("a rendered ServiceSpec reads back");
        back.engine_spec = None;
        assert_eq!(back, plain, "ServiceSpec round trip through the Engine rendering");
    }
    let _ = files::file_spec(doc.clone(), Kind::Secret);
    let _ = files::file_spec(doc.clone(), Kind::Config);
    if let Ok(n) = networks::spec_of(doc.clone()) {
        let _ = n.validate();
    }
    let _ = serde_json::from_value::<nodes::NodeSpec>(doc);
}

/// The `filters` query parameter (already percent-decoded).
pub fn filters(raw: &str) {
    if let Ok(f) = Filters::parse(Some(raw)) {
        let _ = f.only(&["name", "id", "label"]);
        let _ = f.labels("label", &Default::default());
        let _ = f.any("name", |v: &str| v.is_empty());
    }
}

/// What [`engine_body`] reads a body as before the handlers see it.
pub fn canonical(bytes: &[u8]) -> Option<Value> {
    parse_body(bytes).ok()
}
