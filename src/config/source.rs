//! YAML text to a tree in which every node knows its line and column, so that
//! validation can point at the exact place of each mistake.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::diagnostic::{Origin, Report};

/// Deeper nesting than this is certainly a mistake (or an attack); the limit
/// also keeps every walk over the tree, and its drop, far from the stack's end.
const MAX_DEPTH: usize = 64;
/// Bounds what aliases can expand to ("billion laughs").
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Every scalar keeps its text; its type is decided by who reads it.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

impl Node {
    pub fn scalar(text: &str, origin: Origin) -> Node {
        Node {
            value: Value::Scalar {
                text: text.to_string(),
                plain: true,
            },
            origin,
        }
    }

    pub fn empty_map(origin: Origin) -> Node {
        Node {
            value: Value::Map(Vec::new()),
            origin,
        }
    }

    /// A plain `~`, `null` or nothing at all: "not given".
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What this node is, for messages such as "expected a list, got a mapping".
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

fn origin(span: &Span) -> Origin {
    Origin::File {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        origin: Origin,
        anchor: usize,
    },
    Map {
        pairs: Vec<(Node, Node)>,
        key: Option<Node>,
        origin: Origin,
        anchor: usize,
    },
}

/// Parses one YAML document. An empty document is an empty mapping. A syntax
/// error is reported once, at its position, and gives `None`.
pub fn parse(text: &str, report: &mut Report) -> Option<Node> {
    // The Python package's reader accepts a byte-order mark; removing it here
    // also keeps the columns of the first line right.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    while let Some(event) = parser.next_event() {
        let (event, span) = match event {
            Ok(pair) => pair,
            Err(e) => {
                let m = e.marker();
                let at = Origin::File {
                    line: m.line().max(1),
                    column: m.col() + 1,
                };
                report.error(at, "", format!("YAML syntax error: {}", e.info()));
                return None;
            }
        };
        let step = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    Err("only one YAML document is allowed per file".to_string())
                } else {
                    Ok(())
                }
            }
            Event::Scalar(text, style, anchor, _) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    origin: origin(&span),
                };
                builder.complete(node, anchor)
            }
            Event::Alias(id) => builder.alias(id, origin(&span)),
            Event::SequenceStart(anchor, _) => builder.open(Frame::Seq {
                items: Vec::new(),
                origin: origin(&span),
                anchor,
            }),
            Event::MappingStart(anchor, _) => builder.open(Frame::Map {
                pairs: Vec::new(),
                key: None,
                origin: origin(&span),
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => builder.close(),
            Event::StreamEnd => break,
            _ => Ok(()),
        };
        if let Err(message) = step {
            report.error(origin(&span), "", message);
            return None;
        }
    }
    Some(
        builder
            .root
            .unwrap_or_else(|| Node::empty_map(Origin::File { line: 1, column: 1 })),
    )
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
}

impl Builder {
    fn open(&mut self, frame: Frame) -> Result<(), String> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self) -> Result<(), String> {
        let (node, anchor) = match self.stack.pop() {
            Some(Frame::Seq {
                items,
                origin,
                anchor,
            }) => (
                Node {
                    value: Value::Seq(items),
                    origin,
                },
                anchor,
            ),
            Some(Frame::Map {
                pairs,
                origin,
                anchor,
                ..
            }) => (
                Node {
                    value: Value::Map(pairs),
                    origin,
                },
                anchor,
            ),
            None => return Ok(()),
        };
        self.complete(node, anchor)
    }

    fn alias(&mut self, id: usize, at: Origin) -> Result<(), String> {
        let Some((node, size)) = self.anchors.get(&id) else {
            return Err("alias to an unknown anchor".to_string());
        };
        self.nodes += size;
        if self.nodes > MAX_NODES {
            return Err(format!("aliases expand to more than {MAX_NODES} nodes"));
        }
        let mut node = node.clone();
        // An alias is reported where it is used, not where its anchor is.
        node.origin = at;
        self.complete(node, 0)
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), String> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes"));
        }
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { pairs, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => pairs.push((k, node)),
            },
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Node {
        let mut report = Report::new("t.yaml");
        let node = parse(text, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        node.unwrap()
    }

    #[test]
    fn nodes_know_where_they_are() {
        let root = parse_ok("\u{feff}a:\n  b: [1, \"x\"]\n");
        let Value::Map(pairs) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(pairs[0].0.origin, Origin::File { line: 1, column: 1 });
        let Value::Map(inner) = &pairs[0].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.origin, Origin::File { line: 2, column: 3 });
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(
            items[1].origin,
            Origin::File {
                line: 2,
                column: 10
            }
        );
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "x".into(),
                plain: false
            }
        );
    }

    #[test]
    fn an_empty_file_is_an_empty_mapping() {
        assert_eq!(parse_ok("# nothing\n").value, Value::Map(vec![]));
    }

    #[test]
    fn aliases_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let mut report = Report::new("t.yaml");
        assert!(parse(&text, &mut report).is_none());
        assert!(report.errors[0].message.contains("more than"));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = "[".repeat(100_000);
        let mut report = Report::new("t.yaml");
        assert!(parse(&text, &mut report).is_none());
        assert_eq!(report.errors.len(), 1);
    }
}
