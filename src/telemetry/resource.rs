//! The resource every signal carries: who is speaking.

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::resource as res;

/// `service.instance.id` from `OTEL_RESOURCE_ATTRIBUTES` when the operator set one (a pod
/// name, say), otherwise a random UUID: unique per process, as the convention asks.
pub fn build(service_name: &str) -> (Resource, String) {
    let from_env = Resource::builder().build();
    let instance_id = from_env
        .get(&Key::from_static_str(res::SERVICE_INSTANCE_ID))
        .map(|v| v.to_string())
        .unwrap_or_else(random_uuid);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .or_else(sysinfo::System::host_name)
        .unwrap_or_else(|| "unknown".into());
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new(res::SERVICE_VERSION, crate::VERSION),
            KeyValue::new(res::SERVICE_INSTANCE_ID, instance_id.clone()),
            KeyValue::new(res::HOST_NAME, host),
            KeyValue::new(res::PROCESS_PID, i64::from(std::process::id())),
            KeyValue::new(res::OS_TYPE, std::env::consts::OS),
            KeyValue::new(res::PROCESS_RUNTIME_NAME, "rust"),
        ])
        .build();
    (resource, instance_id)
}

fn random_uuid() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = super::random_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, super::random_uuid());
    }
}
