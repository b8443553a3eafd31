// The engine's order ids: the session in the top 16 bits, the client's id below. A client can
// name only its own orders, and a report finds its owner with a shift.

import OrderBook

@inline(__always)
func engineOrderId(_ session: UInt32, _ clientId: OrderId) -> OrderId { OrderId(session) << 48 | clientId }

/// Never negative and below 2^16 (the session index's size), whatever the id: a shift of the
/// id's bits unsigned, so that an id no client could have made (a negative one, from a damaged
/// or forged snapshot) cannot index outside the session table.
@inline(__always)
func owner(_ engineId: OrderId) -> Int { Int(UInt64(bitPattern: engineId) >> 48) }

@inline(__always)
func clientOrderId(_ engineId: OrderId) -> OrderId { engineId & (1 << 48 - 1) }

/// An order that moved from another engine (Engine+Transfer.swift) gets session 0, which no
/// client is given, so its reports reach no session here (the drop copy and the execution
/// stream carry them, by account). Its id: the move's route epoch (low 16 bits) above its place
/// in the moved book (32 bits), unique among the book's orders (sessions of two engines share
/// numbers, and clients their ids); one that is foreign already keeps its id.
@inline(__always)
func foreignOrderId(_ engineId: OrderId, epoch: UInt64, place: Int) -> OrderId {
    owner(engineId) == 0 ? engineId : OrderId(epoch & 0xFFFF) << 32 | OrderId(place & 0xFFFF_FFFF)
}

/// The largest order id a client may use (48 bits).
public let maxClientOrderId: OrderId = 1 << 48 - 1
