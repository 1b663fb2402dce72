#![doc = include_str!("../README.md")]

mod config;
mod error;
mod filter;
mod frame;
mod interfaces;
mod live;
mod source;
mod stats;

pub use config::LiveConfig;
pub use error::CaptureError;
pub use filter::FrameFilter;
pub use frame::{Frame, Next};
pub use interfaces::list_interfaces;
pub use source::{wait_any, Source};
pub use stats::CaptureStats;
