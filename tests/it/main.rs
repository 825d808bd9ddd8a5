//! Integration tests.
mod services;
mod support;
