// The node table of one saved graph, as foundry_trace/node_table.py writes it at SAVE, and its
// validation. The table comes from a file, so nothing here trusts it: check_table() bounds every
// count, index and payload range before build_graph() touches the driver.
//
//   header    32 bytes   magic "FNDGRPH1", version, body count, node count, edge count
//   bodies    16 each    first node, node count, first edge, edge count (body 0 is the graph;
//                        the others are child graphs, each named only by an earlier body)
//   nodes     48 each    in topological order within each body
//   edges     12 each    sorted by destination; source < destination
//
// Variable-size node data (kernel arguments and launch attributes, memset and memcpy parameters)
// lives in a separate payload blob, addressed by (offset, size) from the node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace foundry {

constexpr char kTableMagic[8] = {'F', 'N', 'D', 'G', 'R', 'P', 'H', '1'};
constexpr uint32_t kTableVersion = 1;
constexpr uint64_t kMaxBodies = 1u << 16;
constexpr uint64_t kMaxNodes = 1u << 24;
constexpr uint64_t kMaxEdges = 1u << 26;
constexpr uint64_t kMaxExpandedNodes = 1u << 24;  // child graphs counted once per use
// Child graphs nested below the graph, at most (node_table.MAX_GRAPH_DEPTH mirrors it). Captured
// graphs nest child graphs a few levels at most (a captured cudaGraphLaunch, a library's graph
// inside it). The cap bounds the build's recursion (check_table() runs before every build) and
// the nesting of decode()'s records, which Python walks by recursion too.
constexpr uint32_t kMaxGraphDepth = 64;

enum NodeKind : uint8_t {
  kKernel = 0,
  kMemset = 1,
  kMemcpy = 2,
  kEventRecord = 3,
  kEventWait = 4,
  kEmpty = 5,
  kChildGraph = 6,
  kCollective = 7,  // bound at LOAD to a graph of the live communicator's collective
  kNodeKinds = 8,
};

#pragma pack(push, 1)
struct TableHeader {
  char magic[8];
  uint32_t version;
  uint32_t body_count;
  uint64_t node_count;
  uint64_t edge_count;
};

struct BodyEntry {
  uint32_t first_node;
  uint32_t node_count;
  uint32_t first_edge;
  uint32_t edge_count;
};

struct NodeEntry {
  uint8_t kind;
  uint8_t reserved;
  uint16_t attribute_count;  // kernel: launch attributes after the arguments (8-byte aligned)
  uint32_t index;  // kernel: function; event nodes: event; child graph: body; collective: collective
  uint32_t grid[3];
  uint32_t block[3];
  uint32_t shared_bytes;
  uint32_t payload_size;
  uint64_t payload_offset;
};

struct EdgeEntry {
  uint32_t source;
  uint32_t destination;
  uint8_t from_port;
  uint8_t to_port;
  uint8_t type;
  uint8_t reserved;
};

struct MemsetPayload {
  uint64_t destination;
  uint64_t pitch;
  uint32_t value;
  uint32_t element_size;
  uint64_t width;
  uint64_t height;
};

struct MemcpyPayload {  // device to device
  uint64_t source, source_pitch, source_height, source_x, source_y, source_z;
  uint64_t destination, destination_pitch, destination_height, destination_x, destination_y,
      destination_z;
  uint64_t width, height, depth;
};

struct AttributeEntry {
  uint32_t id;  // CUlaunchAttributeID
  uint32_t reserved;
  uint8_t value[64];  // CUlaunchAttributeValue
};
#pragma pack(pop)

static_assert(sizeof(TableHeader) == 32, "table header layout");
static_assert(sizeof(BodyEntry) == 16, "body entry layout");
static_assert(sizeof(NodeEntry) == 48, "node entry layout");
static_assert(sizeof(EdgeEntry) == 12, "edge entry layout");
static_assert(sizeof(MemsetPayload) == 40, "memset payload layout");
static_assert(sizeof(MemcpyPayload) == 120, "memcpy payload layout");
static_assert(sizeof(AttributeEntry) == 72, "attribute entry layout");

// A read-only view of a table that check_table() accepted. Entries are copied out (memcpy), so
// the bytes need no alignment.
class TableView {
 public:
  TableView(const uint8_t* table, const uint8_t* payload) : table_(table), payload_(payload) {}
  TableHeader header() const;
  BodyEntry body(uint64_t index) const;
  NodeEntry node(uint64_t index) const;
  EdgeEntry edge(uint64_t index) const;
  const uint8_t* payload(uint64_t offset) const { return payload_ + offset; }

 private:
  const uint8_t* table_;
  const uint8_t* payload_;
};

// Whether the driver may be handed a launch attribute of this CUlaunchAttributeID: only ids whose
// values are plain numbers (see graph_table.cpp for why each other id is refused).
bool launch_attribute_allowed(uint32_t id);

// Offset of a kernel node's first launch attribute in the payload.
inline uint64_t attributes_offset(const NodeEntry& node) {
  return node.payload_offset + ((static_cast<uint64_t>(node.payload_size) + 7) & ~uint64_t{7});
}

// Empty when the table is well formed for its payload and the given numbers of functions,
// events and collectives; otherwise what is wrong, naming the body and node.
std::string check_table(const uint8_t* table, uint64_t table_size, const uint8_t* payload,
                        uint64_t payload_size, uint32_t function_count, uint32_t event_count,
                        uint32_t collective_count);

}  // namespace foundry
