//! [`Metered`]: the store every caller gets, timing each operation of the backend it wraps.
//!
//! `store_trait!` declares [`super::Store`] and `Metered`'s implementation of it from one list
//! of methods, so every operation is measured under its own name and a new one cannot be left
//! out.

use std::future::Future;
use std::time::Instant;

use super::{DynStore, StoreError, StoreResult};
use crate::metrics::QueryMetrics;

/// Declares the `Store` trait: its synchronous methods as written, then its async operations,
/// which `Metered` forwards and times.
macro_rules! store_trait {
    (
        $(#[$trait_meta:meta])*
        pub trait Store { $($sync:tt)* }
        queries {
            $(
                $(#[$meta:meta])*
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        /// The store's operations, in the order of the trait: an operation's metrics are at
        /// its index.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        enum Operation {
            $($name,)*
        }

        const OPERATIONS: &[&str] = &[$(stringify!($name),)*];

        $(#[$trait_meta])*
        #[async_trait]
        pub trait Store: Send + Sync + 'static {
            $($sync)*
            $(
                $(#[$meta])*
                async fn $name(&self $(, $arg: $ty)*) -> $ret;
            )*
        }

        #[async_trait]
        impl Store for Metered {
            fn backend(&self) -> Backend {
                self.inner.backend()
            }

            fn expected_schema_version(&self) -> i64 {
                self.inner.expected_schema_version()
            }

            fn writer_stats(&self) -> Option<crate::metrics::WriterStats> {
                self.inner.writer_stats()
            }

            fn query_metrics(&self) -> Option<crate::metrics::QueryMetrics> {
                Some(self.metrics.clone())
            }

            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.time(Operation::$name as usize, self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

/// A store that records how long each operation of the one it wraps took, and how it failed.
pub struct Metered {
    pub(super) inner: DynStore,
    pub(super) metrics: QueryMetrics,
}

impl Metered {
    pub fn new(inner: DynStore) -> Self {
        Self {
            inner,
            metrics: QueryMetrics::new(super::OPERATIONS),
        }
    }

    pub(super) async fn time<T>(
        &self,
        operation: usize,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        let failure = match &result {
            Err(StoreError::Unavailable(_)) => Some("unavailable"),
            Err(StoreError::Other(_)) => Some("other"),
            _ => None,
        };
        self.metrics
            .observe(operation, started.elapsed().as_secs_f64(), failure);
        result
    }
}
