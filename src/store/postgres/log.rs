//! The change log: what a batch appends for the other instances (its accepted commands, with
//! their versions and trace context, and the notices sent with its commit), and the reads with
//! which another instance follows it. The bus calls these; it holds no SQL of its own.

use std::collections::HashMap;

use opentelemetry::trace::SpanContext;
use tokio_postgres::{Client, types::ToSql};

use super::{
    notice::{self, Notice},
    schema,
};
use crate::{
    domain::{Command, CommandError, ImageId},
    store::{Counters, Logged, StoreError, StoredImage},
    telemetry::propagation::{parse_traceparent, traceparent},
};

/// The most changes one catch-up reads; more follow on the next round.
const CATCH_UP_LIMIT: i64 = 10_000;

/// A batch's change-log rows, column by column (one `unnest` insert), and its notices.
#[derive(Default)]
pub(super) struct Rows {
    images: Vec<String>,
    generations: Vec<i64>,
    versions: Vec<i64>,
    commands: Vec<String>,
    parents: Vec<Option<String>>,
    pub notices: Vec<String>,
}

impl Rows {
    pub fn of(instance: &str, log: &[Logged<'_>]) -> Self {
        let mut rows = Rows::default();
        // One pointer per image and batch: its newest version.
        let mut latest: HashMap<&ImageId, usize> = HashMap::new();
        let mut notices = Vec::new();
        for logged in log {
            match logged {
                Logged::Applied { image, generation, version, command, trace } => {
                    let mut body = String::with_capacity(64);
                    body.push_str(r#"{"command":"#);
                    command.write_json(&mut body);
                    body.push('}');
                    rows.images.push(image.to_string());
                    rows.generations.push(*generation as i64);
                    rows.versions.push(*version as i64);
                    rows.commands.push(body);
                    rows.parents.push(traceparent(trace));
                    let notice =
                        Notice::Updated { image: (*image).clone(), generation: *generation, version: *version };
                    match latest.get(image) {
                        Some(&at) => notices[at] = notice,
                        None => {
                            latest.insert(image, notices.len());
                            notices.push(notice);
                        }
                    }
                }
                Logged::Created(image) => notices.push(Notice::Created((*image).clone())),
                Logged::Deleted(image) => notices.push(Notice::Deleted((*image).clone())),
            }
        }
        rows.notices = notices.iter().map(|n| notice::encode(instance, n)).collect();
        rows
    }

    pub async fn append(&self, client: &Client) -> Result<(), StoreError> {
        if self.images.is_empty() {
            return Ok(());
        }
        let params: [&(dyn ToSql + Sync); 5] =
            [&self.images, &self.generations, &self.versions, &self.commands, &self.parents];
        client.execute(schema::LOG, &params).await?;
        Ok(())
    }
}

/// One logged change as another instance reads it.
pub struct Change {
    pub version: u64,
    pub command: Result<Command, CommandError>,
    /// The trace of the request that made it, to continue on this instance.
    pub parent: Option<SpanContext>,
}

/// Starts receiving every instance's notices on this connection.
pub async fn listen(client: &Client) -> Result<(), StoreError> {
    client.batch_execute(schema::LISTEN).await?;
    Ok(())
}

pub async fn notify(client: &Client, instance: &str, notice: &Notice) -> Result<(), StoreError> {
    client.execute(schema::NOTIFY, &[&notice::encode(instance, notice)]).await?;
    Ok(())
}

/// Every stored image's generation and version, and the counters.
pub async fn versions(client: &Client) -> Result<(HashMap<ImageId, (u64, u64)>, Counters), StoreError> {
    let rows = client.query(schema::VERSIONS, &[]).await?;
    let counters = schema::counters_from_row(&client.query_one(schema::COUNTERS, &[]).await?)?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in &rows {
        let Ok(id) = ImageId::parse(row.try_get::<_, &str>(0)?) else { continue };
        stored.insert(id, (row.try_get::<_, i64>(1)? as u64, row.try_get::<_, i64>(2)? as u64));
    }
    Ok((stored, counters))
}

/// The stored image `id` of `generation`, if it still exists.
pub async fn image(client: &Client, id: &ImageId, generation: u64) -> Result<Option<StoredImage>, StoreError> {
    let row = client.query_opt(schema::ONE_IMAGE, &[&id.as_str(), &(generation as i64)]).await?;
    row.as_ref().map(schema::image_from_row).transpose()
}

/// The logged changes of `id` after version `from`, in version order (at most `CATCH_UP_LIMIT`).
pub async fn changes_after(
    client: &Client,
    id: &ImageId,
    generation: u64,
    from: u64,
) -> Result<Vec<Change>, StoreError> {
    let params: [&(dyn ToSql + Sync); 4] = [&id.as_str(), &(generation as i64), &(from as i64), &CATCH_UP_LIMIT];
    let rows = client.query(schema::CHANGES_AFTER, &params).await?;
    rows.iter()
        .map(|row| {
            Ok(Change {
                version: row.try_get::<_, i64>(0)? as u64,
                command: Command::parse_json(row.try_get::<_, &str>(1)?.as_bytes()),
                parent: row.try_get::<_, Option<&str>>(2)?.and_then(parse_traceparent),
            })
        })
        .collect()
}

/// Whether the log holds `version` of `id` now.
pub async fn is_logged(client: &Client, id: &ImageId, generation: u64, version: u64) -> Result<bool, StoreError> {
    let row = client.query_one(schema::IS_LOGGED, &[&id.as_str(), &(generation as i64), &(version as i64)]).await?;
    Ok(row.try_get(0)?)
}

/// Applies the retention rule; answers how many changes it removed.
pub async fn prune(client: &Client) -> Result<u64, StoreError> {
    Ok(client.execute(schema::PRUNE, &[]).await?)
}
