//! Publishing: persistent messages with publisher confirms, and `host enqueue`'s one job.

use super::*;

pub(super) fn persistent(kind: &str) -> BasicProperties {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_type(kind.into())
}

/// Polls `f` once: what lapin does at once (queue a frame, register a confirm) is done, and
/// the rest (waiting for its I/O thread) is left to whoever keeps `f`.
pub(super) async fn poll_once<F: std::future::Future + ?Sized>(
    mut f: std::pin::Pin<&mut F>,
) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Publishes one message and waits for the broker's confirm.
pub(super) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    kind: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            persistent(kind),
        )
        .await
        .map_err(|e| io("publish", e))?
        .await
        .map_err(|e| io("publish confirm", e))?;
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(std::io::Error::other(
            "the broker refused the message (nack)",
        )),
    }
}

/// Puts a job on the queue `queue_name` at `url`: persistent, confirmed.
pub async fn enqueue(broker: &Broker, queue_name: &str, body: &[u8]) -> std::io::Result<()> {
    let conn = broker.connect().await?;
    let channel = conn.create_channel().await.map_err(|e| io("channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| io("confirm mode", e))?;
    declare_jobs_queue(&conn, queue_name).await?;
    publish_confirmed(&channel, "", queue_name, "job", body).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
