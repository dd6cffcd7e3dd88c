//! Shared harness for the integration tests: helpers that start the real
//! `ratethrottle` pieces on 127.0.0.1 and find the test services.
