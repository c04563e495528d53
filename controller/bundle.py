"""Build a device's bundle: what `istioctl x workload entry configure` writes, sealed to it.

The bundle is split in two on purpose. `MeshParts` is everything derived from the mesh
(root certificate, cluster.env, mesh config, hosts, ztunnel environment); its digest is
kept in `status.bundleHash`, so the reconciler notices when Istio's CA rolled over or a
setting changed and issues a new generation. The token is added only when a generation
is actually issued, and never stored anywhere but inside the sealed bundle.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from controller.meshconfig import (
    MeshInputs,
    render_cluster_env,
    render_hosts,
    render_mesh_config,
    render_ztunnel_env,
)
from shared.canonical import canonical_json
from shared.codec import encode
from shared.crypto import load_kx_public, seal_bundle
from shared.messages import BundleContent, HostEntry


@dataclass(frozen=True)
class MeshParts:
    """The token-independent part of a bundle."""

    root_cert: str
    cluster_env: str
    mesh_config: str
    hosts: tuple[tuple[str, tuple[str, ...]], ...]
    ztunnel_env: Mapping[str, str]
    trust_domain: str

    def digest(self) -> str:
        """A stable digest of everything a device would install from these parts."""
        body = {
            "root_cert": self.root_cert,
            "cluster_env": self.cluster_env,
            "mesh_config": self.mesh_config,
            "hosts": [[ip, list(names)] for ip, names in self.hosts],
            "ztunnel_env": dict(self.ztunnel_env),
        }
        return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def render_parts(inputs: MeshInputs, *, root_cert: str) -> MeshParts:
    """Render the mesh-derived files for one device (raises InvalidMeshConfig)."""
    ztunnel_env = render_ztunnel_env(inputs)
    return MeshParts(
        root_cert=root_cert,
        cluster_env=render_cluster_env(inputs),
        mesh_config=render_mesh_config(inputs),
        hosts=tuple((h.ip, h.names) for h in render_hosts(inputs.istiod_ip, inputs.istiod_address)),
        ztunnel_env=ztunnel_env,
        trust_domain=ztunnel_env.get("TRUST_DOMAIN", "cluster.local"),
    )


@dataclass(frozen=True)
class IssuedToken:
    """A token from the TokenRequest API."""

    value: SecretStr
    issued_at: datetime
    expires_at: datetime


def build_content(
    parts: MeshParts,
    *,
    generation: int,
    token: IssuedToken,
    namespace: str,
    device_id: str,
) -> BundleContent:
    """The bundle plaintext of PROTOCOL.md for this generation."""
    return BundleContent(
        generation=generation,
        issued_at=token.issued_at,
        identity=f"spiffe://{parts.trust_domain}/ns/{namespace}/sa/{device_id}",
        namespace=namespace,
        service_account=device_id,
        root_cert=parts.root_cert,
        token=token.value,
        token_expires_at=token.expires_at,
        cluster_env=parts.cluster_env,
        mesh_config=parts.mesh_config,
        hosts=tuple(HostEntry(ip=ip, names=names) for ip, names in parts.hosts),
        ztunnel_env=dict(parts.ztunnel_env),
    )


def seal(content: BundleContent, *, kx_public_b64: str, device_id: str) -> str:
    """Seal the plaintext to the device's X25519 key (HPKE, PROTOCOL.md)."""
    return seal_bundle(
        encode(content),
        load_kx_public(kx_public_b64),
        device_id=device_id,
        generation=content.generation,
    )
