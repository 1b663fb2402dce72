#![doc = include_str!("../README.md")]

mod flow;

pub use flow::{FlowKey, IpProto};
