//! Search (issue 22): events indexed into Elasticsearch or OpenSearch from the outbox ([`indexer`],
//! a second consumer beside the Kafka relay), and `POST /api/v1/search` answered from the index
//! or, without search configured or with the cluster not answering, from the database with the
//! same filters and aggregations ([`query`]).

pub mod client;
pub mod indexer;
pub mod query;
pub mod reindex;

/// The indexer's consumer name in the outbox (cursors, lease, purge).
pub const SEARCH: &str = "search";
