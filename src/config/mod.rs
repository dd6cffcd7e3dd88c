//! The YAML configuration: read (with `${ENV}` substitution and the Python
//! package's `RT_*` overrides), validated with every error located by YAML path
//! and line, and turned into the typed [`Config`].

mod model;

pub use model::*;
