#include "graph_table.hpp"

#include <cuda.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

namespace foundry {
namespace {

constexpr uint64_t kBodiesOffset = sizeof(TableHeader);
// Launch attribute ids that not every cuda.h the build accepts (12.3 on) names: 14 and 16 are in
// CUDA 13.0's; 17 and 18 only in later ones (their values are enums, per the union cuda-bindings
// 13.5 declares). All four values are plain numbers.
constexpr uint32_t kPreferredSharedMemoryCarveout = 14;
constexpr uint32_t kNvlinkUtilCentricScheduling = 16;
constexpr uint32_t kPortableClusterSizeMode = 17;
constexpr uint32_t kSharedMemoryMode = 18;

template <class... Args>
std::string format(const char* pattern, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, pattern, args...);
  return buffer;
}

// True when [offset, offset + size) lies inside [0, limit), without overflow.
bool within(uint64_t offset, uint64_t size, uint64_t limit) {
  return offset <= limit && size <= limit - offset;
}

// The attributes of a kernel node whose attribute range check_node() has bounded.
std::string check_attributes(const NodeEntry& n, const uint8_t* payload) {
  const uint64_t first = attributes_offset(n);
  for (uint16_t a = 0; a < n.attribute_count; ++a) {
    AttributeEntry entry;
    std::memcpy(&entry, payload + first + a * sizeof entry, sizeof entry);
    if (entry.reserved != 0)
      return format("launch attribute #%u (id %u): a reserved field is set", a, entry.id);
    if (!launch_attribute_allowed(entry.id))
      return format(
          "launch attribute id %u is not one LOAD restores (only attributes whose values are plain "
          "numbers: an event or node handle in an archive is another process's pointer)",
          entry.id);
  }
  return "";
}

std::string check_node(const NodeEntry& n, uint64_t body, uint64_t body_count,
                       const uint8_t* payload, uint64_t payload_size, uint32_t functions,
                       uint32_t events, uint32_t collectives) {
  if (n.kind >= kNodeKinds) return format("unknown node kind %u", n.kind);
  if (n.reserved != 0) return "a reserved field is set";
  if (n.kind != kKernel && n.attribute_count != 0) return "launch attributes on a non-kernel node";
  switch (n.kind) {
    case kKernel: {
      if (n.index >= functions)
        return format("function %u of %u", n.index, functions);
      if (!within(n.payload_offset, n.payload_size, payload_size))
        return "kernel arguments outside the payload";
      if (n.attribute_count != 0 &&
          !within(attributes_offset(n), uint64_t{n.attribute_count} * sizeof(AttributeEntry),
                  payload_size))
        return "launch attributes outside the payload";
      return check_attributes(n, payload);
    }
    case kMemset: {
      if (n.payload_size != sizeof(MemsetPayload)) return "memset parameters of the wrong size";
      if (!within(n.payload_offset, n.payload_size, payload_size))
        return "memset parameters outside the payload";
      MemsetPayload m;
      std::memcpy(&m, payload + n.payload_offset, sizeof m);
      if (m.element_size != 1 && m.element_size != 2 && m.element_size != 4)
        return format("memset element size %u (must be 1, 2 or 4)", m.element_size);
      return "";
    }
    case kMemcpy:
      if (n.payload_size != sizeof(MemcpyPayload)) return "memcpy parameters of the wrong size";
      if (!within(n.payload_offset, n.payload_size, payload_size))
        return "memcpy parameters outside the payload";
      return "";
    case kEventRecord:
    case kEventWait:
      if (n.index >= events) return format("event %u of %u", n.index, events);
      return "";
    case kCollective:
      if (n.index >= collectives) return format("collective %u of %u", n.index, collectives);
      return "";
    case kChildGraph:
      if (n.index <= body || n.index >= body_count)
        return format("child graph names body %u (must be after %llu and before %llu)", n.index,
                      static_cast<unsigned long long>(body),
                      static_cast<unsigned long long>(body_count));
      return "";
    default:
      return "";
  }
}

// Bounds the nodes the driver would hold (each use of a child graph copies it) and the nesting
// of child graphs. Bodies name only later bodies, so one pass from the last body computes both
// without recursion, each node visited once.
std::string check_expansion(const TableView& view, uint32_t body_count) {
  std::vector<uint64_t> expanded(body_count, 0);
  std::vector<uint32_t> depth(body_count, 0);  // child-graph levels below each body
  uint32_t deepest = 0;
  for (uint64_t b = body_count; b-- > 0;) {
    const BodyEntry body = view.body(b);
    uint64_t total = body.node_count;  // below 2^49: each term is at most 2^24
    for (uint64_t i = 0; i < body.node_count; ++i) {
      const NodeEntry n = view.node(body.first_node + i);
      if (n.kind != kChildGraph) continue;
      total += expanded[n.index];
      depth[b] = std::max(depth[b], depth[n.index] + 1);
    }
    if (total > kMaxExpandedNodes) return "node table: child graphs expand past the node limit";
    expanded[b] = total;
    deepest = std::max(deepest, depth[b]);
  }
  if (deepest > kMaxGraphDepth)
    return format("node table: child graphs nest %u deep (at most %u: captured graphs nest them a "
                  "few levels at most)",
                  deepest, kMaxGraphDepth);
  return "";
}

}  // namespace

// The allow-list of launch attributes, by CUlaunchAttributeID (cuda.h). Refused: 0 IGNORE (SAVE
// never writes it); 7 PROGRAMMATIC_EVENT and 12 LAUNCH_COMPLETION_EVENT, whose values hold a
// CUevent, a host pointer the driver dereferences; 13 DEVICE_UPDATABLE_KERNEL_NODE, whose value
// holds devNode, a handle the driver writes (returns) and that kernels updating the node take as
// an argument, so the SAVE process's handle would be baked into the graph; 15 and past 18, ids
// this build does not know the value of.
bool launch_attribute_allowed(uint32_t id) {
  switch (id) {
    case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW:  // base_ptr is a device address, a mere hint
    case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
    case CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY:
    case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
    case CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
    case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
    case CU_LAUNCH_ATTRIBUTE_PRIORITY:
    case CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP:
    case CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN:
    case CU_LAUNCH_ATTRIBUTE_PREFERRED_CLUSTER_DIMENSION:
    case kPreferredSharedMemoryCarveout:
    case kNvlinkUtilCentricScheduling:
    case kPortableClusterSizeMode:
    case kSharedMemoryMode:
      return true;
    default:
      return false;
  }
}

TableHeader TableView::header() const {
  TableHeader h;
  std::memcpy(&h, table_, sizeof h);
  return h;
}

BodyEntry TableView::body(uint64_t index) const {
  BodyEntry b;
  std::memcpy(&b, table_ + kBodiesOffset + index * sizeof b, sizeof b);
  return b;
}

NodeEntry TableView::node(uint64_t index) const {
  const TableHeader h = header();
  NodeEntry n;
  std::memcpy(&n, table_ + kBodiesOffset + h.body_count * sizeof(BodyEntry) + index * sizeof n,
              sizeof n);
  return n;
}

EdgeEntry TableView::edge(uint64_t index) const {
  const TableHeader h = header();
  EdgeEntry e;
  std::memcpy(&e,
              table_ + kBodiesOffset + h.body_count * sizeof(BodyEntry) +
                  h.node_count * sizeof(NodeEntry) + index * sizeof e,
              sizeof e);
  return e;
}

std::string check_table(const uint8_t* table, uint64_t table_size, const uint8_t* payload,
                        uint64_t payload_size, uint32_t function_count, uint32_t event_count,
                        uint32_t collective_count) {
  if (table_size < sizeof(TableHeader)) return "node table: shorter than its header";
  TableView view(table, nullptr);
  const TableHeader h = view.header();
  if (std::memcmp(h.magic, kTableMagic, sizeof kTableMagic) != 0) return "node table: bad magic";
  if (h.version != kTableVersion)
    return format("node table: version %u, this build reads %u", h.version, kTableVersion);
  if (h.body_count == 0 || h.body_count > kMaxBodies || h.node_count > kMaxNodes ||
      h.edge_count > kMaxEdges)
    return "node table: body, node or edge count out of range";
  const uint64_t expected = sizeof(TableHeader) + h.body_count * sizeof(BodyEntry) +
                            h.node_count * sizeof(NodeEntry) + h.edge_count * sizeof(EdgeEntry);
  if (table_size != expected)
    return format("node table: %llu bytes where its counts need %llu",
                  static_cast<unsigned long long>(table_size),
                  static_cast<unsigned long long>(expected));

  uint64_t next_node = 0, next_edge = 0;
  for (uint64_t b = 0; b < h.body_count; ++b) {
    const BodyEntry body = view.body(b);
    if (body.first_node != next_node || body.first_edge != next_edge)
      return format("node table: body %llu does not follow the previous one",
                    static_cast<unsigned long long>(b));
    next_node += body.node_count;
    next_edge += body.edge_count;
    if (next_node > h.node_count || next_edge > h.edge_count)
      return format("node table: body %llu runs past the node or edge list",
                    static_cast<unsigned long long>(b));
    for (uint64_t i = 0; i < body.node_count; ++i) {
      const std::string problem = check_node(view.node(body.first_node + i), b, h.body_count,
                                             payload, payload_size, function_count, event_count,
                                             collective_count);
      if (!problem.empty())
        return format("node table: body %llu, node %llu: ", static_cast<unsigned long long>(b),
                      static_cast<unsigned long long>(i)) +
               problem;
    }
    uint32_t previous_destination = 0;
    for (uint64_t i = 0; i < body.edge_count; ++i) {
      const EdgeEntry e = view.edge(body.first_edge + i);
      if (e.destination >= body.node_count || e.source >= e.destination ||
          e.destination < previous_destination || e.reserved != 0)
        return format("node table: body %llu, edge %llu is out of range or out of order",
                      static_cast<unsigned long long>(b), static_cast<unsigned long long>(i));
      previous_destination = e.destination;
    }
  }
  if (next_node != h.node_count || next_edge != h.edge_count)
    return "node table: nodes or edges belong to no body";

  return check_expansion(view, h.body_count);
}

}  // namespace foundry
