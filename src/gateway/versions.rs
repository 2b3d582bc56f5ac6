//! Which APIs the gateway offers, at which versions: for each API it handles, the range it
//! implements, cut to what the crate's codec knows and, for forwarded APIs, to what the brokers
//! support (asked once with ApiVersions).

use std::collections::BTreeMap;

use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;

use super::upstream::Upstream;
use super::wire::{request_payload, WireError};

/// How an API is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// Answered by the gateway alone: the brokers' versions do not matter.
    Local,
    /// Forwarded (perhaps rewritten): the brokers must speak the version too.
    Forwarded,
}

/// Every API the gateway handles, with the newest version it implements.
///
/// Caps, and why: Produce 9 and Fetch 12 are the last versions that name topics rather than
/// carry topic ids and that have no `node_endpoints` to rewrite; OffsetCommit and OffsetFetch
/// 9 likewise name topics.
const HANDLED: &[(ApiKey, i16, Served)] = &[
    (ApiKey::ApiVersions, 3, Served::Local),
    (ApiKey::SaslHandshake, 1, Served::Local),
    (ApiKey::SaslAuthenticate, 2, Served::Local),
    (ApiKey::Metadata, 12, Served::Forwarded),
    (ApiKey::DescribeCluster, 1, Served::Forwarded),
    (ApiKey::Produce, 9, Served::Forwarded),
    (ApiKey::InitProducerId, 5, Served::Forwarded),
    (ApiKey::Fetch, 12, Served::Forwarded),
    (ApiKey::ListOffsets, 10, Served::Forwarded),
    (ApiKey::OffsetForLeaderEpoch, 4, Served::Forwarded),
    (ApiKey::FindCoordinator, 6, Served::Forwarded),
    (ApiKey::JoinGroup, 9, Served::Forwarded),
    (ApiKey::SyncGroup, 5, Served::Forwarded),
    (ApiKey::Heartbeat, 4, Served::Forwarded),
    (ApiKey::LeaveGroup, 5, Served::Forwarded),
    (ApiKey::OffsetCommit, 9, Served::Forwarded),
    (ApiKey::OffsetFetch, 9, Served::Forwarded),
    (ApiKey::DescribeGroups, 6, Served::Forwarded),
    (ApiKey::ListGroups, 5, Served::Forwarded),
    (ApiKey::ConsumerGroupHeartbeat, 1, Served::Forwarded),
    (ApiKey::DescribeConfigs, 4, Served::Forwarded),
    (ApiKey::CreateTopics, 7, Served::Local),
    (ApiKey::DeleteTopics, 6, Served::Local),
    (ApiKey::CreatePartitions, 3, Served::Local),
    (ApiKey::AlterConfigs, 2, Served::Local),
    (ApiKey::IncrementalAlterConfigs, 1, Served::Local),
    (ApiKey::DeleteRecords, 2, Served::Local),
    (ApiKey::CreateAcls, 3, Served::Local),
    (ApiKey::DeleteAcls, 3, Served::Local),
    (ApiKey::DescribeAcls, 3, Served::Local),
];

/// How long the brokers may take to answer the gateway's own ApiVersions.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The versions the gateway offers, by API key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Versions {
    ranges: BTreeMap<i16, VersionRange>,
}

impl Versions {
    /// The intersection of what the gateway implements and what the brokers answered.
    pub(crate) fn intersect(brokers: &ApiVersionsResponse) -> Versions {
        let theirs: BTreeMap<i16, VersionRange> = brokers
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        let mut ranges = BTreeMap::new();
        for &(api, cap, served) in HANDLED {
            let codec = api.valid_versions();
            let mut range = VersionRange {
                min: codec.min,
                max: codec.max.min(cap),
            };
            if served == Served::Forwarded {
                match theirs.get(&(api as i16)) {
                    Some(broker) => range = range.intersect(broker),
                    None => continue,
                }
            }
            if !range.is_empty() {
                ranges.insert(api as i16, range);
            }
        }
        Versions { ranges }
    }

    /// Asks a broker for its versions and intersects.
    pub(crate) async fn fetch(upstream: &Upstream) -> Result<Versions, String> {
        let version = 3;
        let mut request = ApiVersionsRequest::default();
        request.client_software_name =
            kafka_protocol::protocol::StrBytes::from_static_str("kafflow-gateway");
        request.client_software_version =
            kafka_protocol::protocol::StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let payload = request_payload(ApiKey::ApiVersions, version, 1, &request)
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(ASK_TIMEOUT, upstream.round_trip(&payload))
            .await
            .map_err(|_| "the broker did not answer ApiVersions in time".to_string())?
            .map_err(|e| e.to_string())?;
        let response = decode_api_versions(answer, version).map_err(|e| e.to_string())?;
        if response.error_code != 0 {
            return Err(format!(
                "broker refused ApiVersions with error {}",
                response.error_code
            ));
        }
        Ok(Versions::intersect(&response))
    }

    pub(crate) fn range(&self, api: ApiKey) -> Option<VersionRange> {
        self.ranges.get(&(api as i16)).copied()
    }

    /// Whether `version` of `api` is offered.
    pub(crate) fn offers(&self, api: ApiKey, version: i16) -> bool {
        self.range(api)
            .is_some_and(|r| r.min <= version && version <= r.max)
    }

    /// The ApiVersions answer's list.
    pub(crate) fn api_keys(
        &self,
    ) -> Vec<kafka_protocol::messages::api_versions_response::ApiVersion> {
        self.ranges
            .iter()
            .map(|(&key, range)| {
                let mut v = kafka_protocol::messages::api_versions_response::ApiVersion::default();
                v.api_key = key;
                v.min_version = range.min;
                v.max_version = range.max;
                v
            })
            .collect()
    }
}

fn decode_api_versions(
    payload: bytes::Bytes,
    version: i16,
) -> Result<ApiVersionsResponse, WireError> {
    use kafka_protocol::messages::ResponseHeader;
    use kafka_protocol::protocol::Decodable;
    let mut buf = payload;
    // ApiVersions always answers with response header v0.
    ResponseHeader::decode(&mut buf, 0).map_err(|e| WireError::malformed("response header", e))?;
    ApiVersionsResponse::decode(&mut buf, version)
        .map_err(|e| WireError::malformed("ApiVersions response", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn broker(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        let mut v = ApiVersion::default();
        v.api_key = key as i16;
        v.min_version = min;
        v.max_version = max;
        v
    }

    #[test]
    fn forwarded_apis_are_cut_to_the_brokers_and_local_ones_are_not() {
        let mut response = ApiVersionsResponse::default();
        response.api_keys = vec![
            broker(ApiKey::Produce, 3, 7),
            broker(ApiKey::Fetch, 4, 17),
            broker(ApiKey::Metadata, 0, 13),
        ];
        let versions = Versions::intersect(&response);
        let produce = versions.range(ApiKey::Produce).expect("produce offered");
        assert_eq!((produce.min, produce.max), (3, 7), "the broker's max wins");
        let fetch = versions.range(ApiKey::Fetch).expect("fetch offered");
        assert_eq!(fetch.max, 12, "the gateway's cap wins");
        let handshake = versions
            .range(ApiKey::SaslHandshake)
            .expect("handshake offered");
        // librdkafka (2.0 among others) signs in with PLAIN only if v0 is in the range, as
        // every broker offers it, though it then sends v1.
        assert_eq!((handshake.min, handshake.max), (0, 1));
        assert!(versions.range(ApiKey::CreateTopics).is_some());
        assert!(
            versions.range(ApiKey::JoinGroup).is_none(),
            "an API the brokers do not offer is not offered"
        );
        assert!(
            versions.range(ApiKey::AddPartitionsToTxn).is_none(),
            "an API the gateway does not handle is not offered"
        );
        assert!(versions.offers(ApiKey::Produce, 5));
        assert!(!versions.offers(ApiKey::Produce, 8));
    }
}
