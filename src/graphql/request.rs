//! Reading GraphQL operations out of an HTTP request: POST JSON (one object
//! or a batched array), POST `application/graphql`, and GET `?query=`.
//! Only reads: the body is forwarded upstream unchanged.

use std::borrow::Cow;

use http::Method;
use serde_json::{Map, Value};

/// The most operations one batched request may carry.
pub const MAX_BATCH: usize = 100;

/// One operation as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub query: String,
    pub operation_name: Option<String>,
    pub variables: Option<Map<String, Value>>,
}

/// Why a request could not be read as GraphQL (answered with GRAPHQL_PARSE_FAILED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn error(message: impl Into<String>) -> RequestError {
    RequestError(message.into())
}

/// The operations of a request, or `None` when it carries none and goes on
/// as plain HTTP: a GET without `query` (a GraphiQL page), a CORS preflight.
pub fn read(
    method: &Method,
    content_type: Option<&str>,
    url_query: Option<&str>,
    body: &[u8],
) -> Result<Option<Vec<Operation>>, RequestError> {
    if method == Method::GET || method == Method::HEAD {
        let params = UrlParams::parse(url_query.unwrap_or(""));
        let Some(query) = params.get("query") else {
            return Ok(None);
        };
        let operation = params.operation(query.into_owned())?;
        return Ok(Some(vec![operation]));
    }
    if method != Method::POST {
        return Ok(None);
    }
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media_type == "application/graphql" {
        let query = std::str::from_utf8(body)
            .map_err(|_| error("the request body is not UTF-8"))?
            .to_string();
        let params = UrlParams::parse(url_query.unwrap_or(""));
        return Ok(Some(vec![params.operation(query)?]));
    }
    if media_type == "application/json" || media_type.ends_with("+json") {
        return read_json(body).map(Some);
    }
    // Anything else could still be executed by a lenient server: refusing it
    // is what keeps the limits from being walked around.
    Err(error(format!(
        "unsupported content type {:?}: send application/json or application/graphql",
        content_type.unwrap_or("")
    )))
}

/// A JSON body: one `{query, variables, operationName}` or an array of them.
pub fn read_json(body: &[u8]) -> Result<Vec<Operation>, RequestError> {
    // serde_json stops at 128 levels of nesting, so this cannot overflow the stack.
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| error(format!("the request body is not valid JSON: {e}")))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(error("the batch is empty"));
            }
            if items.len() > MAX_BATCH {
                return Err(error(format!(
                    "the batch has {} operations, more than {MAX_BATCH}",
                    items.len()
                )));
            }
            items.into_iter().map(operation_of).collect()
        }
        other => Ok(vec![operation_of(other)?]),
    }
}

fn operation_of(value: Value) -> Result<Operation, RequestError> {
    let Value::Object(mut object) = value else {
        return Err(error("an operation must be a JSON object"));
    };
    let query = match object.remove("query") {
        Some(Value::String(query)) => query,
        // Persisted queries (a hash without the text) cannot be priced.
        None | Some(Value::Null) => return Err(error("the operation has no \"query\"")),
        Some(_) => return Err(error("\"query\" must be a string")),
    };
    let operation_name = match object.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(error("\"operationName\" must be a string")),
    };
    let variables = variables_of(object.remove("variables"))?;
    Ok(Operation {
        query,
        operation_name,
        variables,
    })
}

/// `variables`: an object, null, or (as some clients send) a JSON-encoded object.
fn variables_of(value: Option<Value>) -> Result<Option<Map<String, Value>>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(Value::Null) => Ok(None),
            _ => Err(error("\"variables\" must be a JSON object")),
        },
        Some(_) => Err(error("\"variables\" must be a JSON object")),
    }
}

/// `application/x-www-form-urlencoded` pairs of a URL's query string.
struct UrlParams<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> UrlParams<'a> {
    fn parse(query: &'a str) -> UrlParams<'a> {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(name), decode(value))
            })
            .collect();
        UrlParams { pairs }
    }

    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn operation(&self, query: String) -> Result<Operation, RequestError> {
        let operation_name = self.get("operationName").filter(|n| !n.is_empty());
        let variables = match self.get("variables") {
            Some(text) => variables_of(Some(Value::String(text.into_owned())))?,
            None => None,
        };
        Ok(Operation {
            query,
            operation_name: operation_name.map(Cow::into_owned),
            variables,
        })
    }
}

/// Form decoding: `+` is a space, `%XX` a byte; invalid UTF-8 is replaced.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['+', '%']) {
        return Cow::Borrowed(text);
    }
    let spaced = text.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
    Cow::Owned(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_the_url_parameters() {
        let ops = read(
            &Method::GET,
            None,
            Some("query=query+Q(%24n%3AInt)%7Ba%7D&variables=%7B%22n%22%3A3%7D&operationName=Q"),
            b"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ops[0].query, "query Q($n:Int){a}");
        assert_eq!(ops[0].operation_name.as_deref(), Some("Q"));
        assert_eq!(ops[0].variables.as_ref().unwrap()["n"], 3);
        assert_eq!(read(&Method::GET, None, Some("x=1"), b"").unwrap(), None);
        assert_eq!(read(&Method::OPTIONS, None, None, b"").unwrap(), None);
    }

    #[test]
    fn post_reads_json_batches_and_graphql_text() {
        let body =
            br#"[{"query":"{a}"},{"query":"{b}","variables":"{\"x\":1}","operationName":null}]"#;
        let ops = read(
            &Method::POST,
            Some("application/json; charset=utf-8"),
            None,
            body,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1].variables.as_ref().unwrap()["x"], 1);
        let ops = read(
            &Method::POST,
            Some("application/graphql"),
            Some("operationName=A"),
            b"query A {a} query B {b}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ops[0].operation_name.as_deref(), Some("A"));
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for (content_type, body) in [
            ("application/json", &b"{"[..]),
            ("application/json", b"[]"),
            ("application/json", b"{\"query\":1}"),
            ("application/json", b"{\"variables\":{}}"),
            ("application/json", b"{\"query\":\"{a}\",\"variables\":[1]}"),
            ("application/json", b"7"),
            ("text/plain", b"{a}"),
            ("application/graphql", b"\xff"),
        ] {
            assert!(read(&Method::POST, Some(content_type), None, body).is_err());
        }
        let deep = "[".repeat(100_000);
        assert!(
            read(
                &Method::POST,
                Some("application/json"),
                None,
                deep.as_bytes()
            )
            .is_err()
        );
        let many = format!("[{}]", vec![r#"{"query":"{a}"}"#; MAX_BATCH + 1].join(","));
        assert!(
            read(
                &Method::POST,
                Some("application/json"),
                None,
                many.as_bytes()
            )
            .is_err()
        );
    }
}
