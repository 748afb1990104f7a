//! AWS: credentials, a SigV4-signed client with retries, the EBS direct APIs
//! and the EC2 calls `i2kit push aws` needs.

pub mod client;
pub mod credentials;
pub mod ebs;
pub mod ec2;
pub mod push;
pub mod xml;
