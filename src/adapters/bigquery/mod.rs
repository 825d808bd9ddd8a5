//! BigQuery: a source ([`BigQuerySource`]) and a sink ([`BigQuerySink`]), with materialisation
//! through the BigQuery [`SqlDialect`](crate::kernel::materialise::SqlDialect)
//! ([`BigQueryDialect`]).
//!
//! - REST calls (jobs.query, datasets) go through `gcp-bigquery-client`'s [`Client`], built
//!   against the configured endpoint (an emulator's, or Google's); full reads go through the
//!   **Storage Read API** over gRPC with the crate's generated `BigQueryReadClient`, in Arrow
//!   format. See [`client`] and [`read`].
//! - The source reads each table whole (**snapshot**, by the Storage Read API, parallel streams)
//!   or polls it (**cursor** or **diff**, by queries). See [`source`] and [`poll`].
//! - The sink keeps a delta log (`lakesync_deltas`, idempotent by deltaId through `MERGE … WHEN
//!   NOT MATCHED`) and, when asked, materialised tables. See [`sink`].
//!
//! **Names.** Every dataset, table and column name is checked ([`check_dataset`],
//! [`check_table`], [`check_column`]) and backtick-quoted; every value is a query parameter.
//!
//! [`Client`]: gcp_bigquery_client::Client

pub mod client;
pub mod dialect;
pub mod params;
pub mod poll;
pub mod read;
pub mod sink;
pub mod source;

pub use client::{BigQueryClient, BigQueryConfig, Credentials};
pub use dialect::BigQueryDialect;
pub use sink::{BigQuerySink, BigQuerySinkOptions};
pub use source::{BigQuerySource, BigQueryStrategy, BigQueryTableSpec};

use std::fmt::Display;

use crate::kernel::schema::validate_identifier;
use crate::{Error, Result};

/// The name errors give the system.
pub(crate) const SYSTEM: &str = "bigquery";

/// A BigQuery failure as a LakeSync error, saying what was being done (`context`).
pub(crate) fn bq_error(context: impl Display, message: impl Display, retryable: bool) -> Error {
    Error::External {
        system: SYSTEM,
        message: format!("{context}: {message}"),
        retryable,
        source: None,
    }
}

/// Checks a dataset name: 1 to 1024 letters, digits or underscores (BigQuery's rule).
pub fn check_dataset(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "bigquery dataset",
            format!("{name:?}: a dataset name is 1 to 1024 letters, digits or underscores"),
        ))
    }
}

/// Checks a table name: 1 to 1024 letters, digits, underscores or dashes. (BigQuery allows more
/// — spaces, Unicode letters — but LakeSync names tables by its identifiers, so this is the
/// subset that can appear.)
pub fn check_table(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "bigquery table",
            format!("{name:?}: a table name is 1 to 1024 letters, digits, `_` or `-`"),
        ))
    }
}

/// Checks a column name: a LakeSync identifier (letters, digits, `_`, not starting with a
/// digit), which BigQuery accepts as a column name.
pub fn check_column(name: &str) -> Result<()> {
    validate_identifier(name)
}

/// Checks a project id: letters, digits, `-`, and the `.` and `:` of domain-scoped projects.
pub fn check_project(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "bigquery project",
            format!("{name:?}: a project id is letters, digits, `-`, `.` or `:`"),
        ))
    }
}

/// A checked, backtick-quoted column name.
pub(crate) fn quote_column(name: &str) -> Result<String> {
    check_column(name)?;
    Ok(format!("`{name}`"))
}

/// `` `project.dataset.table` ``, every part checked (so no backtick can occur inside).
pub(crate) fn qualified(project: &str, dataset: &str, table: &str) -> Result<String> {
    check_project(project)?;
    check_dataset(dataset)?;
    check_table(table)?;
    Ok(format!("`{project}.{dataset}.{table}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["", "a`b", "a.b", "a b", "x; DROP TABLE y", "ds\n"] {
            assert!(check_dataset(bad).is_err(), "{bad:?}");
            assert!(check_table(bad).is_err(), "{bad:?}");
            assert!(check_column(bad).is_err(), "{bad:?}");
        }
        assert!(check_dataset("finance_2026").is_ok());
        assert!(check_table("invoices-eu").is_ok());
        assert!(check_dataset("a-b").is_err());
        assert!(check_project("test-proj").is_ok());
        assert!(check_project("p`").is_err());
        assert_eq!(
            qualified("test-proj", "fin", "inv").unwrap(),
            "`test-proj.fin.inv`"
        );
        assert!(qualified("test-proj", "fin", "in`v").is_err());
        assert_eq!(quote_column("amount").unwrap(), "`amount`");
    }
}
