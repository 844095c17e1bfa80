//! Kafka plumbing shared by capture, restore and `digest`: how to reach a cluster
//! (brokers, SASL, TLS, the `kafka://` URL), which topics a source selects, topic
//! metadata and configs, and the conversion of a fetched record into a
//! [`KafkaRecord`].
//!
//! Everything here is blocking (librdkafka's own threads do the I/O); async callers
//! run it on the blocking pool.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use regex::Regex;

use super::config::SaslConfig;
use crate::capture::Fault;
use crate::event::{KafkaConfigEntry, KafkaHeader, KafkaRecord, KafkaTimestampType};

/// How long to wait for a cluster to answer a metadata request before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request (watermarks, committed offsets, configs) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to Kafka. Messages name the cluster (never a password)
/// and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// No broker answered in time.
    #[error("cannot reach the Kafka brokers {brokers} within {}s ({detail}); check the addresses, that the brokers are running and reachable, and the TLS/SASL settings", .timeout.as_secs())]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// How long we waited.
        timeout: Duration,
        /// librdkafka's error.
        detail: String,
    },
    /// A request failed.
    #[error("Kafka {what} on {brokers} failed: {detail}; {hint}")]
    Request {
        /// What was asked.
        what: String,
        /// The bootstrap list.
        brokers: String,
        /// librdkafka's error.
        detail: String,
        /// What to do.
        hint: String,
    },
    /// A named topic does not exist.
    #[error("topic `{topic}` does not exist on {brokers}; check the name (known topics: {known})")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// The bootstrap list.
        brokers: String,
        /// Topics the cluster has.
        known: String,
    },
    /// A `kafka://` URL is malformed (the URL is shown with secrets masked).
    #[error("`{0}` is not a Kafka URL; use kafka://host:port[,host:port...] (SASL and TLS clusters are configured in a [[source]] table, not in a URL)")]
    BadUrl(String),
    /// A topic pattern is not a regular expression.
    #[error("topic pattern `{pattern}` is not a valid regular expression: {detail}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// The regex error.
        detail: String,
    },
}

impl Fault for KafkaError {
    /// Unreachable brokers and failed requests may pass; a missing topic, a bad URL
    /// or pattern will not.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            KafkaError::Unreachable { .. } | KafkaError::Request { .. }
        )
    }
}

/// How to reach one Kafka cluster.
#[derive(Clone)]
pub struct Connection {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    sasl: Option<SaslConfig>,
    tls: bool,
}

impl std::fmt::Debug for Connection {
    // Hand-written so that the SASL password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("brokers", &self.brokers)
            .field("sasl", &self.sasl.as_ref().map(|s| &s.mechanism))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Connection {
    /// A connection from a source's configuration.
    pub fn new(brokers: &[String], sasl: Option<SaslConfig>, tls: bool) -> Self {
        Connection {
            brokers: brokers.join(","),
            sasl,
            tls,
        }
    }

    /// Parses `kafka://host:port[,host:port...]` (plaintext, no authentication).
    pub fn from_url(url: &str) -> Result<Self, KafkaError> {
        let bad = || KafkaError::BadUrl(crate::redact::redact_url(url));
        let rest = url.strip_prefix("kafka://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('@') || rest.contains('/') {
            return Err(bad());
        }
        for b in rest.split(',') {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(bad());
            }
        }
        Ok(Connection {
            brokers: rest.to_string(),
            sasl: None,
            tls: false,
        })
    }

    /// A librdkafka configuration with the bootstrap list, security settings and
    /// bounded timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", "10000")
            .set("socket.connection.setup.timeout.ms", "10000")
            .set("log_level", "3");
        let protocol = match (&self.sasl, self.tls) {
            (None, false) => "plaintext",
            (None, true) => "ssl",
            (Some(_), false) => "sasl_plaintext",
            (Some(_), true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(s) = &self.sasl {
            c.set("sasl.mechanisms", &s.mechanism)
                .set("sasl.username", &s.username)
                .set("sasl.password", s.password.expose());
        }
        c
    }

    /// A consumer that is never assigned anything: for metadata, watermarks and
    /// (with `group`) a group's committed offsets.
    pub fn query_client(&self, group: Option<&str>) -> Result<BaseConsumer, KafkaError> {
        let mut c = self.client_config();
        c.set("enable.auto.commit", "false");
        if let Some(g) = group {
            c.set("group.id", g);
        }
        c.create()
            .map_err(|e| self.request_error("client set-up", e))
    }

    /// An admin client.
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.client_config()
            .create()
            .map_err(|e| self.request_error("admin client set-up", e))
    }

    /// A [`KafkaError::Request`] for `what`.
    pub fn request_error(&self, what: &str, e: impl std::fmt::Display) -> KafkaError {
        KafkaError::Request {
            what: what.to_string(),
            brokers: self.brokers.clone(),
            detail: e.to_string(),
            hint: "check that the brokers are healthy and that the client may do this".into(),
        }
    }

    /// The cluster's metadata (brokers, topics); a cluster that does not answer
    /// within [`CONNECT_TIMEOUT`] is [`KafkaError::Unreachable`].
    pub fn metadata(
        &self,
        client: &BaseConsumer,
    ) -> Result<rdkafka::metadata::Metadata, KafkaError> {
        client
            .fetch_metadata(None, CONNECT_TIMEOUT)
            .map_err(|e| KafkaError::Unreachable {
                brokers: self.brokers.clone(),
                timeout: CONNECT_TIMEOUT,
                detail: e.to_string(),
            })
    }

    /// Every topic of the cluster with its partition count, in name order. The
    /// first call against a cluster is also the reachability check.
    pub fn topics(&self, client: &BaseConsumer) -> Result<BTreeMap<String, i32>, KafkaError> {
        Ok(self
            .metadata(client)?
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// `(low, high)` watermarks of one partition, asked of its leader.
    pub fn watermarks(
        &self,
        client: &BaseConsumer,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), KafkaError> {
        client
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| self.request_error(&format!("watermarks of {topic}/{partition}"), e))
    }

    /// The configs the broker reports for `topics`. A broker that does not implement
    /// DescribeConfigs yields an error (callers decide whether that is fatal).
    pub fn topic_configs(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        topics: &[String],
    ) -> Result<BTreeMap<String, Vec<KafkaConfigEntry>>, KafkaError> {
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let specs: Vec<ResourceSpecifier<'_>> = topics
            .iter()
            .map(|t| ResourceSpecifier::Topic(t.as_str()))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let fut = admin.describe_configs(specs.iter(), &opts);
        let results =
            futures_block_on(fut).map_err(|e| self.request_error("DescribeConfigs", e))?;
        let mut out = BTreeMap::new();
        for (topic, r) in topics.iter().zip(results) {
            let res = r.map_err(|e| self.request_error(&format!("DescribeConfigs {topic}"), e))?;
            let entries = res
                .entries
                .into_iter()
                .filter(|e| !e.is_sensitive)
                .filter_map(|e| {
                    Some(KafkaConfigEntry {
                        explicit: !e.is_default
                            && matches!(e.source, rdkafka::admin::ConfigSource::DynamicTopic),
                        name: e.name,
                        value: e.value?,
                    })
                })
                .collect();
            out.insert(topic.clone(), entries);
        }
        Ok(out)
    }
}

/// Runs an rdkafka admin future to completion on the calling (blocking) thread.
/// rdkafka resolves these futures from its own background thread, so no async
/// runtime is needed.
pub fn futures_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::{Arc, Condvar, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    struct Signal {
        woken: Mutex<bool>,
        cv: Condvar,
    }
    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            let mut w = self.woken.lock().unwrap_or_else(|p| p.into_inner());
            *w = true;
            self.cv.notify_one();
        }
    }
    let signal = Arc::new(Signal {
        woken: Mutex::new(false),
        cv: Condvar::new(),
    });
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = signal.woken.lock().unwrap_or_else(|p| p.into_inner());
        while !*woken {
            woken = signal.cv.wait(woken).unwrap_or_else(|p| p.into_inner());
        }
        *woken = false;
    }
}

/// The high-water mark of `topic`/`partition` carried by the last fetch response
/// `consumer` received (librdkafka caches it; no request is made). `None` before
/// the first fetch of that partition.
///
/// Used beside the ListOffsets answer ([`Connection::watermarks`]): some
/// Kafka-protocol brokers (tansu 0.6) answer ListOffsets(latest) with the last
/// batch's base offset + 1 while their fetch responses are right; the larger of
/// the two is a sound mark either way.
pub fn fetched_high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, `topic` is a
    // NUL-terminated string that outlives the call, and librdkafka only writes the
    // two i64 out-parameters. The call reads a cache and does not block.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Which topics a source captures: literal names, and regular expressions (entries
/// starting with `^`). Internal topics (`__consumer_offsets`, ...) match only by name.
#[derive(Debug, Clone)]
pub struct TopicFilter {
    names: Vec<String>,
    patterns: Vec<Regex>,
}

impl TopicFilter {
    /// Compiles the configured `topics` list.
    pub fn new(topics: &[String]) -> Result<Self, KafkaError> {
        let mut f = TopicFilter {
            names: Vec::new(),
            patterns: Vec::new(),
        };
        for t in topics {
            if t.starts_with('^') {
                f.patterns
                    .push(Regex::new(t).map_err(|e| KafkaError::BadPattern {
                        pattern: t.clone(),
                        detail: e.to_string(),
                    })?);
            } else {
                f.names.push(t.clone());
            }
        }
        Ok(f)
    }

    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        self.names.iter().any(|n| n == topic)
            || (!topic.starts_with("__") && self.patterns.iter().any(|p| p.is_match(topic)))
    }

    /// The literal names (which must exist for `digest`).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Converts a fetched record into the journal's payload.
pub fn record_of(m: &BorrowedMessage<'_>) -> KafkaRecord {
    use rdkafka::message::Timestamp as T;
    let (timestamp_ms, ty) = match m.timestamp() {
        T::NotAvailable => (-1, KafkaTimestampType::NotAvailable),
        T::CreateTime(t) => (t, KafkaTimestampType::CreateTime),
        T::LogAppendTime(t) => (t, KafkaTimestampType::LogAppendTime),
    };
    KafkaRecord {
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| KafkaHeader {
                        key: h.key.to_string(),
                        value: h.value.map(<[u8]>::to_vec),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms,
        timestamp_type: ty as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_garbage() {
        let c = Connection::from_url("kafka://a:9092,b:9093").unwrap();
        assert_eq!(c.brokers, "a:9092,b:9093");
        for bad in [
            "http://a:1",
            "kafka://",
            "kafka://a",
            "kafka://u:p@a:1",
            "kafka://a:x",
        ] {
            assert!(Connection::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filter_takes_names_and_patterns_but_not_internal_topics() {
        let f = TopicFilter::new(&["orders".into(), "^audit\\..*".into()]).unwrap();
        assert!(f.matches("orders"));
        assert!(f.matches("audit.login"));
        assert!(!f.matches("orders2"));
        assert!(!f.matches("payments"));
        let all = TopicFilter::new(&["^.*".into()]).unwrap();
        assert!(!all.matches("__consumer_offsets"));
        assert!(TopicFilter::new(&["^(".into()]).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Connection::new(
            &["a:1".into()],
            Some(SaslConfig {
                mechanism: "PLAIN".into(),
                username: "u".into(),
                password: crate::redact::Secret::new("hunter2"),
            }),
            true,
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
