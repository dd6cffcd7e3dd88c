//! Arbitrary text through the GraphQL parser and the analysis: no panic, no
//! stack overflow, bounded time (libFuzzer's timeout catches slow inputs).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use ratethrottle::graphql::analysis::{CostModel, analyse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let field_costs = BTreeMap::from([("Query.search".to_string(), 10), ("a".to_string(), 3)]);
    let field_limits = BTreeMap::from([("Mutation.login".to_string(), 5), ("b".to_string(), 2)]);
    let list_fields = vec!["friends".to_string(), "T.items".to_string()];
    let model = CostModel {
        default_list_size: 10,
        max_list_size: 1000,
        field_costs: &field_costs,
        list_fields: &list_fields,
        field_limits: &field_limits,
    };
    let variables = serde_json_variables();
    let _ = analyse(text, None, Some(&variables), &model);
    let _ = analyse(text, Some("Q"), None, &model);
});

fn serde_json_variables() -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("n".into(), 5.into());
    map.insert("big".into(), u64::MAX.into());
    map.insert("neg".into(), (-9).into());
    map
}
