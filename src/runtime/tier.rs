//! Lifecycle tiering: a sink that routes each delta by the age of its HLC to a *hot* or a *cold*
//! sink.
//!
//! A delta whose HLC wall clock is at most `max_age` old when it is written goes to the hot
//! sink; an older one goes to the cold sink. Age is measured against the epoch's time, fixed
//! when the runtime planned the epoch (so a replay routes exactly as the original did), or the
//! tier's clock outside the runtime — never against data. Both inner sinks are committed with
//! the same epoch, so tiering keeps the exactly-once guarantee of each.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, not};
use async_trait::async_trait;

use crate::kernel::delta_batch::HLC;
use crate::kernel::hlc::{HlcTimestamp, SystemClock, WallClock};
use crate::runtime::api::{CommitStats, Sink, TableRef};
use crate::{Error, Result};

/// Routes deltas by HLC age to a hot or a cold sink.
pub struct TierSink {
    name: String,
    max_age: Duration,
    hot: Box<dyn Sink>,
    cold: Box<dyn Sink>,
    clock: Arc<dyn WallClock>,
    /// The current epoch's time, set by `begin_epoch`; the clock is the fallback.
    epoch_now_ms: Option<u64>,
}

impl std::fmt::Debug for TierSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierSink")
            .field("name", &self.name)
            .field("max_age", &self.max_age)
            .field("hot", &self.hot)
            .field("cold", &self.cold)
            .finish_non_exhaustive()
    }
}

impl TierSink {
    /// A tier named `name`: deltas up to `max_age` old go to `hot`, older ones to `cold`.
    pub fn new(
        name: impl Into<String>,
        max_age: Duration,
        hot: Box<dyn Sink>,
        cold: Box<dyn Sink>,
    ) -> Self {
        Self {
            name: name.into(),
            max_age,
            hot,
            cold,
            clock: Arc::new(SystemClock),
            epoch_now_ms: None,
        }
    }

    /// Uses `clock` to measure age (for tests).
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Which rows of `batch` are hot.
    fn hot_mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let hlc = batch
            .column_by_name(HLC)
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>())
            .ok_or_else(|| Error::invalid("tier", "batch has no UInt64 _hlc column"))?;
        let now = self.epoch_now_ms.unwrap_or_else(|| self.clock.now_ms());
        let cutoff = now.saturating_sub(self.max_age.as_millis() as u64);
        Ok(hlc
            .iter()
            .map(|h| h.map(|h| HlcTimestamp(h).wall_ms() >= cutoff))
            .collect())
    }
}

#[async_trait]
impl Sink for TierSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self, tables: &[TableRef]) -> Result<()> {
        self.hot.prepare(tables).await?;
        self.cold.prepare(tables).await
    }

    async fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let (hot, cold) = (
            self.hot.committed_epoch().await?,
            self.cold.committed_epoch().await?,
        );
        Ok(hot.max(cold))
    }

    fn begin_epoch(&mut self, epoch: u64, now_ms: u64) {
        // Route by the epoch's planned time, so a replay routes exactly as the original did.
        self.epoch_now_ms = Some(now_ms);
        self.hot.begin_epoch(epoch, now_ms);
        self.cold.begin_epoch(epoch, now_ms);
    }

    async fn write(&mut self, table: &TableRef, batch: RecordBatch) -> Result<()> {
        let hot = self.hot_mask(&batch)?;
        let cold = not(&hot)?;
        let (h, c) = (
            filter_record_batch(&batch, &hot)?,
            filter_record_batch(&batch, &cold)?,
        );
        if h.num_rows() > 0 {
            self.hot.write(table, h).await?;
        }
        if c.num_rows() > 0 {
            self.cold.write(table, c).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, epoch: u64) -> Result<CommitStats> {
        let hot = self.hot.commit(epoch).await?;
        let cold = self.cold.commit(epoch).await?;
        Ok(CommitStats {
            rows: hot.rows + cold.rows,
            bytes: hot.bytes + cold.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::parquet::{ParquetCompression, ParquetSink};
    use crate::kernel::delta_batch::deltas_to_batch;
    use crate::kernel::hlc::ManualClock;
    use crate::synth::{Workload, tasks_schema};

    #[tokio::test]
    async fn routes_by_hlc_age() {
        let dir = tempfile::tempdir().unwrap();
        let table: TableRef = Arc::new(tasks_schema());
        let day = 86_400_000u64;
        let now = 1_767_225_600_000 + 10 * day;
        let hot = ParquetSink::local(
            "hot",
            "p",
            &dir.path().join("hot"),
            ParquetCompression::Snappy,
        )
        .unwrap();
        let cold = ParquetSink::local(
            "cold",
            "p",
            &dir.path().join("cold"),
            ParquetCompression::Snappy,
        )
        .unwrap();
        let mut tier = TierSink::new(
            "tier",
            Duration::from_millis(5 * day),
            Box::new(hot),
            Box::new(cold),
        )
        .with_clock(Arc::new(ManualClock::new(now)));
        tier.prepare(std::slice::from_ref(&table)).await.unwrap();
        // 80 deltas 10 days old, 20 from an hour ago.
        let mut deltas = Workload::new(10, 2, 3).deltas(80, now - 10 * day);
        deltas.extend(Workload::new(10, 2, 4).deltas(20, now - 3_600_000));
        tier.write(&table, deltas_to_batch(&table, &deltas).unwrap())
            .await
            .unwrap();
        assert_eq!(tier.commit(1).await.unwrap().rows, 100);
        let rows = |sub: &str| {
            let bytes = std::fs::read(
                dir.path()
                    .join(sub)
                    .join("tasks/p-".to_string() + sub + "-000000000001.parquet"),
            )
            .unwrap();
            crate::kernel::parquet_io::read_parquet(bytes.into()).unwrap()[0].num_rows()
        };
        assert_eq!((rows("hot"), rows("cold")), (20, 80));
    }
}
