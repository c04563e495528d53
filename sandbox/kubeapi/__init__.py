"""A Kubernetes API server emulated over real HTTP, for tests and `pimesh sandbox`.

Built on kmock 0.8 (its `KubernetesScaffold` serves discovery and `/version`) with the
gaps of its stateful emulator closed in one module each: URL parsing and verbs
(`routes`), per-object field rules (`objects`), storage, preconditions, garbage
collection and CRDs (`store`), selectors (`selectors`), PATCH flavours (`patches`),
watches (`watches`), the TokenRequest subresource (`tokens`) and fault injection with
a request log (`traffic`). `server.KubeApiServer` runs it all in a background thread.
"""

from sandbox.kubeapi.resources import ResourceType
from sandbox.kubeapi.server import KubeApiServer
from sandbox.kubeapi.tokens import IssuedToken
from sandbox.kubeapi.traffic import Injection, RequestRecord

__all__ = ["Injection", "IssuedToken", "KubeApiServer", "RequestRecord", "ResourceType"]
