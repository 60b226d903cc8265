//! What every benchmark of Fast Sandbox reports the same way: latency
//! series with percentiles, ratios against a baseline measured in the same
//! run, the `ctr run -d` baseline itself, and Markdown, JSON and SVG output.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ctr;
pub mod plot;
pub mod series;

pub use series::{Series, markdown};
