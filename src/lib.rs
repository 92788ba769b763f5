//! imagegate: an image-policy admission controller for Kubernetes.
//!
//! The core ([`reference`], [`policy`], [`workload`], [`decision`], [`mutation`]) is sans-IO:
//! plain functions over plain data. The adapters around it serve the core over HTTPS, run the operator, and
//! provide the command line.

pub mod admission;
pub mod alloc;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod decision;
pub mod events;
pub mod evidence;
pub mod gather;
pub mod http;
pub mod manifests;
pub mod metrics;
pub mod mutation;
pub mod namespaces;
pub mod operator;
pub mod policy;
pub mod reference;
pub mod registry;
pub mod report;
pub mod signature;
pub mod skim;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod verification;
pub mod workload;
