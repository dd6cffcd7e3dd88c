//! Helpers for the GraphQL tests: requests as GraphQL clients send them and
//! the parts of a GraphQL error answer.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::net::Got;

/// A POST of `{"query": query}` (plus `variables` when given) as JSON.
pub fn query_post(url: &str, query: &str, variables: Option<Value>) -> Request<Full<Bytes>> {
    let mut body = json!({ "query": query });
    if let Some(variables) = variables {
        body["variables"] = variables;
    }
    json_post(url, &body)
}

/// A POST of any JSON body (a batch, an operationName) as application/json.
pub fn json_post(url: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

/// `errors[0].extensions.code` of a GraphQL error answer.
pub fn error_code(got: &Got) -> String {
    let body = got.json();
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a GraphQL error: {body}"))
        .to_string()
}

/// `errors[0].extensions` of a GraphQL error answer.
pub fn extensions(got: &Got) -> Value {
    got.json()["errors"][0]["extensions"].clone()
}
