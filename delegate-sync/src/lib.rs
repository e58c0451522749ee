//! delegate-sync: places the delegate of each proxy pod in a target cluster, creates it,
//! mirrors it back and cleans up (steps 3–7 of the pod's journey, issue #5).
//!
//! Built so far: the pure parts the controller stands on.
//! - [`placement`]: which cluster fits the most replicas of a pod, counting delegates in flight.
//! - [`quantity`]: Kubernetes quantities as exact integers.
//! - [`delegate`]: the delegate pod from a verified saved manifest.
//! - [`outcome`]: the result a terminal delegate gives its proxy.

pub mod delegate;
pub mod outcome;
pub mod placement;
pub mod quantity;
