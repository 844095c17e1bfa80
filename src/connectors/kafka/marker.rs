//! Recovery-point markers in Kafka's own log: a record keyed by the point's id on
//! the marker topic `tidemark.points` (one partition, created on first use), which
//! the source must capture (`config validate` says so otherwise). The record's
//! journal time places the point among the records the source captured around it.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::client::{futures_block_on, Connection, TopicFilter};
use crate::app::marker::KAFKA_TOPIC;
use crate::config::Timeouts;
use crate::connectors::{ConnectorError, MarkWriter};
use crate::event::{ChangeEvent, Payload};
use crate::position::PositionKind;

/// Why a source selecting `topics` cannot be marked.
pub fn problem(topics: &[String]) -> Option<String> {
    let captures = TopicFilter::new(topics).is_ok_and(|f| f.matches(KAFKA_TOPIC));
    (!captures).then(|| {
        format!(
            "recovery points need the marker topic captured: add \"{KAFKA_TOPIC}\" to its `topics`"
        )
    })
}

/// Creates the marker topic if missing and connects a producer to it.
pub fn connect(
    conn: &Connection,
    timeouts: &Timeouts,
) -> Result<Box<dyn MarkWriter>, ConnectorError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ConnectorError::from_display(conn.request_error(what, e))
    };
    let admin = conn.admin().map_err(ConnectorError::from_display)?;
    let opts = AdminOptions::new().request_timeout(Some(timeouts.read));
    let topic = NewTopic::new(KAFKA_TOPIC, 1, TopicReplication::Fixed(-1));
    let created = futures_block_on(admin.create_topics([&topic], &opts))
        .map_err(|e| err("CreateTopics tidemark.points", &e))?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err("CreateTopics tidemark.points", &code)),
        }
    }
    // acks=all without idempotence: a retry could write the marker twice, and
    // the first one is the one found; no producer-id round trip on the write.
    let producer: BaseProducer<Delivered> = conn
        .client_config()
        .set("acks", "all")
        .set("linger.ms", "0")
        // One small request whose round trip is timed: no Nagle delay.
        .set("socket.nagle.disable", "true")
        .set("message.timeout.ms", timeouts.read.as_millis().to_string())
        .create_with_context(Delivered::default())
        .map_err(|e| err("producer set-up", &e))?;
    // Connected to the partition's leader before the timed write.
    producer
        .client()
        .fetch_metadata(Some(KAFKA_TOPIC), timeouts.connect)
        .map_err(|e| err("Metadata tidemark.points", &e))?;
    Ok(Box::new(KafkaMarker {
        conn: conn.clone(),
        producer,
        timeout: timeouts.read,
    }))
}

struct KafkaMarker {
    conn: Connection,
    producer: BaseProducer<Delivered>,
    timeout: Duration,
}

impl MarkWriter for KafkaMarker {
    fn write(&mut self, id: &str) -> Result<(), ConnectorError> {
        let err = |e: &dyn std::fmt::Display| {
            ConnectorError::from_display(
                self.conn
                    .request_error("producing the recovery-point marker", e),
            )
        };
        let value = format!("{{\"point\":\"{id}\"}}");
        self.producer
            .send(
                BaseRecord::<str, str>::to(KAFKA_TOPIC)
                    .key(id)
                    .payload(&value),
            )
            .map_err(|(e, _)| err(&e))?;
        self.producer
            .flush(self.timeout + Duration::from_secs(1))
            .map_err(|e| err(&e))?;
        let delivered = self
            .producer
            .context()
            .0
            .lock()
            .ok()
            .and_then(|mut d| d.take());
        match delivered {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(err(&e)),
            None => Err(err(&"no delivery report")),
        }
    }
}

/// Keeps the marker record's delivery report.
#[derive(Default)]
struct Delivered(Mutex<Option<Result<(), String>>>);

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(mut d) = self.0.lock() {
            *d = Some(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
        }
    }
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    let on_topic = matches!(
        event.position.as_ref().and_then(|p| p.kind.as_ref()),
        Some(PositionKind::Kafka(p)) if p.topic == KAFKA_TOPIC
    );
    on_topic
        && matches!(&event.payload, Some(Payload::Kafka(r)) if r.key.as_deref() == Some(id.as_bytes()))
}
