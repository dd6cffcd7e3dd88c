//! The cost of one GraphQL operation, read from its text alone (no schema):
//! depth, complexity, per-field call counts and whether it introspects.
//! The parser is bounded (nesting and token limits) and the walk below is
//! iterative with a cap on the selections it visits, so hostile input costs
//! bounded time and stack.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use apollo_parser::cst::{self, CstNode};
use apollo_parser::{Parser, SyntaxToken};
use serde_json::{Map, Value};
use smallvec::SmallVec;

/// Nesting the parser accepts (selection sets, lists, objects). Far above any
/// sensible `max_depth`, far below what would threaten the stack.
pub const RECURSION_LIMIT: usize = 200;
/// Tokens the lexer reads before giving up: a 1 MiB query of braces stops here.
pub const TOKEN_LIMIT: usize = 100_000;
/// Selections visited while expanding fragments: a fragment "bomb" (each
/// fragment spreading the previous one twice) stops here instead of doubling forever.
pub const MAX_VISITS: u64 = 100_000;

/// The paging arguments whose value says how many items a list field returns.
pub const PAGING_ARGUMENTS: [&str; 4] = ["first", "last", "limit", "take"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

impl OperationKind {
    /// The root type's conventional name, used for `Type.field` keys.
    pub fn root_type(self) -> &'static str {
        match self {
            OperationKind::Query => "Query",
            OperationKind::Mutation => "Mutation",
            OperationKind::Subscription => "Subscription",
        }
    }
}

/// What prices a query: a route's `graphql` block, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct CostModel<'a> {
    pub default_list_size: u64,
    pub max_list_size: u64,
    /// `Type.field` or `field` → cost of one call (default 1).
    pub field_costs: &'a BTreeMap<String, u64>,
    /// `Type.field` or `field` names that return lists without a paging argument.
    pub list_fields: &'a [String],
    /// `Type.field` or `field` names whose calls are counted.
    pub field_limits: &'a BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub kind: OperationKind,
    /// Fields nested in the deepest path: `{ a }` is 1.
    pub depth: u32,
    pub complexity: u64,
    /// Whether `__schema` or `__type` is selected.
    pub introspection: bool,
    /// `field_limits` key → calls in this operation (list multipliers included).
    pub field_calls: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// Not a query we can read: syntax, unknown fragment, cycle, missing operation.
    #[error("{0}")]
    Invalid(String),
    /// Fragments expand to more than [`MAX_VISITS`] selections.
    #[error("the query expands to more than {MAX_VISITS} selections")]
    TooLarge,
}

fn invalid(message: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(message.into())
}

/// Parses `query` and analyses the operation `operation_name` selects (or
/// the only one). `variables` feed paging arguments given as variables.
pub fn analyse(
    query: &str,
    operation_name: Option<&str>,
    variables: Option<&Map<String, Value>>,
    model: &CostModel<'_>,
) -> Result<Analysis, AnalysisError> {
    let tree = Parser::new(query)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if let Some(error) = tree.errors().next() {
        return Err(if error.is_limit() {
            invalid("the query is too large or too deeply nested to parse")
        } else {
            invalid(format!("syntax error: {}", error.message()))
        });
    }
    let document = tree.document();
    let mut operations = Vec::new();
    let mut fragments: HashMap<String, cst::FragmentDefinition> = HashMap::new();
    for definition in document.definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(fragment) => {
                let name = fragment
                    .fragment_name()
                    .and_then(|n| token(n.name()))
                    .ok_or_else(|| invalid("a fragment has no name"))?;
                if fragments
                    .insert(name.text().to_string(), fragment)
                    .is_some()
                {
                    return Err(invalid(format!(
                        "fragment \"{}\" is defined twice",
                        name.text()
                    )));
                }
            }
            _ => return Err(invalid("only operations and fragments may be sent")),
        }
    }
    let operation = select(operations, operation_name)?;
    let kind = match operation.operation_type() {
        None => OperationKind::Query,
        Some(t) if t.mutation_token().is_some() => OperationKind::Mutation,
        Some(t) if t.subscription_token().is_some() => OperationKind::Subscription,
        Some(_) => OperationKind::Query,
    };
    let defaults = variable_defaults(&operation);
    let selection_set = operation
        .selection_set()
        .ok_or_else(|| invalid("the operation has no selection set"))?;
    let walker = Walker {
        model,
        fragments: &fragments,
        variables,
        defaults: &defaults,
    };
    walker.walk(kind, selection_set)
}

/// The operation `name` picks, or the only one when no name is given.
fn select(
    operations: Vec<cst::OperationDefinition>,
    name: Option<&str>,
) -> Result<cst::OperationDefinition, AnalysisError> {
    match name.filter(|n| !n.is_empty()) {
        Some(wanted) => operations
            .into_iter()
            .find(|op| token(op.name()).is_some_and(|t| t.text() == wanted))
            .ok_or_else(|| invalid(format!("unknown operation named \"{wanted}\""))),
        None => {
            let count = operations.len();
            let mut operations = operations.into_iter();
            match (operations.next(), count) {
                (Some(op), 1) => Ok(op),
                (None, _) => Err(invalid("the document contains no operation")),
                _ => Err(invalid(
                    "operationName is required when the document has several operations",
                )),
            }
        }
    }
}

/// The first token of a name node: its identifier. (apollo-parser's own
/// `Name::text` unwraps; this cannot panic.)
fn token(name: Option<cst::Name>) -> Option<SyntaxToken> {
    name?.syntax().first_token()
}

/// `$name` → its literal default value, for variables the request leaves out.
fn variable_defaults(operation: &cst::OperationDefinition) -> HashMap<String, cst::Value> {
    let mut out = HashMap::new();
    let Some(definitions) = operation.variable_definitions() else {
        return out;
    };
    for definition in definitions.variable_definitions() {
        let name = definition.variable().and_then(|v| token(v.name()));
        let value = definition.default_value().and_then(|d| d.value());
        if let (Some(name), Some(value)) = (name, value) {
            out.insert(name.text().to_string(), value);
        }
    }
    out
}

struct Walker<'a> {
    model: &'a CostModel<'a>,
    fragments: &'a HashMap<String, cst::FragmentDefinition>,
    variables: Option<&'a Map<String, Value>>,
    defaults: &'a HashMap<String, cst::Value>,
}

/// One selection set being walked: an explicit stack instead of recursion.
struct Frame {
    selections: cst::CstChildren<cst::Selection>,
    /// Product of the list sizes of the enclosing fields.
    multiplier: u64,
    /// Depth of the fields directly in this set.
    depth: u32,
    /// The type these selections are on, when the text says it (root
    /// operation type, a fragment's or inline fragment's type condition).
    parent_type: Option<Rc<str>>,
    /// Whether this frame expands a named fragment (which leaves the cycle check when done).
    fragment: bool,
}

impl Walker<'_> {
    fn walk(
        &self,
        kind: OperationKind,
        root: cst::SelectionSet,
    ) -> Result<Analysis, AnalysisError> {
        let mut analysis = Analysis {
            kind,
            depth: 0,
            complexity: 0,
            introspection: false,
            field_calls: Vec::new(),
        };
        let mut stack = vec![Frame {
            selections: root.selections(),
            multiplier: 1,
            depth: 1,
            parent_type: Some(Rc::from(kind.root_type())),
            fragment: false,
        }];
        // Fragments being expanded on the current path: meeting one again is a cycle.
        let mut expanding: Vec<String> = Vec::new();
        let mut visits: u64 = 0;
        while let Some(frame) = stack.last_mut() {
            let Some(selection) = frame.selections.next() else {
                // Frames nest, so the fragment this one expanded is the last one entered.
                if stack.pop().is_some_and(|f| f.fragment) {
                    expanding.pop();
                }
                continue;
            };
            visits += 1;
            if visits > MAX_VISITS {
                return Err(AnalysisError::TooLarge);
            }
            let (multiplier, depth) = (frame.multiplier, frame.depth);
            let parent = frame.parent_type.clone();
            // @skip / @include are ignored: a selection counts as if included.
            match selection {
                cst::Selection::Field(field) => {
                    let name = token(field.name()).ok_or_else(|| invalid("a field has no name"))?;
                    let name = name.text();
                    analysis.depth = analysis.depth.max(depth);
                    if name == "__schema" || name == "__type" {
                        analysis.introspection = true;
                    }
                    let cost = self.field_cost(parent.as_deref(), name);
                    analysis.complexity = analysis
                        .complexity
                        .saturating_add(multiplier.saturating_mul(cost));
                    self.count_call(&mut analysis, parent.as_deref(), name, multiplier);
                    if let Some(set) = field.selection_set() {
                        let size = self.list_size(&field, parent.as_deref(), name);
                        stack.push(Frame {
                            selections: set.selections(),
                            multiplier: multiplier.saturating_mul(size),
                            depth: depth.saturating_add(1),
                            parent_type: None,
                            fragment: false,
                        });
                    }
                }
                cst::Selection::InlineFragment(inline) => {
                    let Some(set) = inline.selection_set() else {
                        continue;
                    };
                    let condition = type_condition(inline.type_condition());
                    stack.push(Frame {
                        selections: set.selections(),
                        multiplier,
                        depth,
                        parent_type: condition.or(parent),
                        fragment: false,
                    });
                }
                cst::Selection::FragmentSpread(spread) => {
                    let name = spread
                        .fragment_name()
                        .and_then(|n| token(n.name()))
                        .ok_or_else(|| invalid("a fragment spread has no name"))?;
                    let name = name.text();
                    let fragment = self
                        .fragments
                        .get(name)
                        .ok_or_else(|| invalid(format!("unknown fragment \"{name}\"")))?;
                    if expanding.iter().any(|n| n == name) {
                        return Err(invalid(format!("fragment \"{name}\" spreads itself")));
                    }
                    let Some(set) = fragment.selection_set() else {
                        continue;
                    };
                    expanding.push(name.to_string());
                    stack.push(Frame {
                        selections: set.selections(),
                        multiplier,
                        depth,
                        parent_type: type_condition(fragment.type_condition()),
                        fragment: true,
                    });
                }
            }
        }
        Ok(analysis)
    }

    /// One call's cost: 1 unless `field_costs` says otherwise; `__typename`
    /// is free (no resolver runs for it).
    fn field_cost(&self, parent: Option<&str>, field: &str) -> u64 {
        if field == "__typename" {
            return 0;
        }
        matching(self.model.field_costs.keys(), parent, field)
            .iter()
            .filter_map(|key| self.model.field_costs.get(*key))
            .copied()
            .max()
            .unwrap_or(1)
    }

    fn count_call(&self, analysis: &mut Analysis, parent: Option<&str>, field: &str, calls: u64) {
        if self.model.field_limits.is_empty() {
            return;
        }
        for key in matching(self.model.field_limits.keys(), parent, field) {
            match analysis.field_calls.iter_mut().find(|(k, _)| k == key) {
                Some((_, n)) => *n = n.saturating_add(calls),
                None => analysis.field_calls.push((key.to_string(), calls)),
            }
        }
    }

    /// How many items a field with a selection set stands for: its paging
    /// argument clamped to 1..=max_list_size, else `default_list_size` for a
    /// configured list field, else 1 (an object).
    fn list_size(&self, field: &cst::Field, parent: Option<&str>, name: &str) -> u64 {
        let max = self.model.max_list_size.max(1);
        let paged = field
            .arguments()
            .into_iter()
            .flat_map(|a| a.arguments())
            .filter_map(|argument| {
                let name = token(argument.name())?;
                PAGING_ARGUMENTS
                    .contains(&name.text())
                    .then(|| self.paging_value(argument.value()))
            });
        if let Some(size) = paged.max() {
            return size.clamp(1, max);
        }
        if !matching(self.model.list_fields.iter(), parent, name).is_empty() {
            return self.model.default_list_size.clamp(1, max);
        }
        1
    }

    /// A paging argument's value before clamping. Zero and negative values
    /// become 0 (clamped to 1 later), huge ones saturate; a value that is not
    /// a number counts as `default_list_size`.
    fn paging_value(&self, value: Option<cst::Value>) -> u64 {
        let fallback = self.model.default_list_size;
        match value {
            Some(cst::Value::IntValue(int)) => int
                .syntax()
                .first_token()
                .map_or(fallback, |t| int_text(t.text())),
            Some(cst::Value::FloatValue(float)) => float
                .syntax()
                .first_token()
                .and_then(|t| t.text().parse::<f64>().ok())
                .map_or(fallback, float_size),
            Some(cst::Value::Variable(variable)) => {
                let Some(name) = token(variable.name()) else {
                    return fallback;
                };
                match self.variables.and_then(|v| v.get(name.text())) {
                    Some(Value::Null) | None => match self.defaults.get(name.text()) {
                        // A default is a literal (never a variable), so this recursion is one level.
                        Some(default) if !matches!(default, cst::Value::Variable(_)) => {
                            self.paging_value(Some(default.clone()))
                        }
                        _ => fallback,
                    },
                    Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                        (Some(u), _, _) => u,
                        (None, Some(_), _) => 0,
                        (None, None, Some(f)) => float_size(f),
                        _ => fallback,
                    },
                    Some(_) => fallback,
                }
            }
            _ => fallback,
        }
    }
}

/// An integer literal's size: negative → 0, beyond u64 → u64::MAX.
fn int_text(text: &str) -> u64 {
    if text.starts_with('-') {
        return 0;
    }
    text.parse::<u64>().unwrap_or(u64::MAX)
}

fn float_size(f: f64) -> u64 {
    if f.is_nan() || f <= 0.0 {
        0
    } else {
        // `as` saturates at u64::MAX for huge values.
        f.ceil() as u64
    }
}

fn type_condition(condition: Option<cst::TypeCondition>) -> Option<Rc<str>> {
    let name = token(condition?.named_type()?.name())?;
    Some(Rc::from(name.text()))
}

/// The configured keys that apply to `field` under `parent`. With the parent
/// type known: `Parent.field` if configured, else `field`. Without it (nested
/// fields, since there is no schema): `field` and every `Type.field` of that
/// name, so an unknown type is never priced below what any type would be.
fn matching<'k>(
    keys: impl Iterator<Item = &'k String> + Clone,
    parent: Option<&str>,
    field: &str,
) -> SmallVec<[&'k str; 2]> {
    let typed = |key: &str| {
        key.rsplit_once('.')
            .is_some_and(|(ty, f)| f == field && parent.is_none_or(|p| p == ty))
    };
    let mut out: SmallVec<[&'k str; 2]> = SmallVec::new();
    if parent.is_some() {
        if let Some(key) = keys.clone().find(|k| typed(k)) {
            out.push(key);
            return out;
        }
        out.extend(keys.filter(|k| k.as_str() == field).map(String::as_str));
        return out;
    }
    out.extend(
        keys.filter(|k| k.as_str() == field || typed(k))
            .map(String::as_str),
    );
    out
}
