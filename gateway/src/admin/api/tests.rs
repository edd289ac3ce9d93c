use std::collections::BTreeSet;

use super::*;

/// Every route the router serves is in the document, and every documented operation is
/// served: the router is built from `table()`, so comparing the two is comparing both.
#[test]
fn the_openapi_document_and_the_router_match_both_ways() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = table()
        .into_iter()
        .map(|(m, p, _)| (m.as_str().to_owned(), p.to_owned()))
        .collect();
    assert_eq!(routed, documented, "routes vs /api/openapi.json");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Every operation but the document itself names the scope it needs.
    for (method, path) in &documented {
        if path != "/api/openapi.json" {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(op["security"].is_array(), "{method} {path} has no security");
        }
    }
}
