package coord

import "math"

// WireLen is the length of a coordinate's wire form: the Euclidean
// components and the height in tenths of a millisecond, then the error in
// thousandths. Integers keep the gossiped form short and exact, so that
// every node reads the same coordinate and computes the same distances.
const WireLen = Dims + 2

// Wire returns c's wire form. c is rounded to the wire's units; a node
// uses the rounded form itself as well (FromWire(c.Wire())), so that its
// own view matches everyone else's.
func (c Coordinate) Wire() []int {
	w := make([]int, 0, WireLen)
	for _, v := range c.Vec {
		w = append(w, int(math.Round(v*10)))
	}
	return append(w, int(math.Round(c.Height*10)), int(math.Round(c.Error*1000)))
}

// FromWire reads a wire form; ok is false when it has the wrong length or
// its coordinate is out of bounds (Valid), which a receiver treats as no
// coordinate at all.
func FromWire(w []int) (c Coordinate, ok bool) {
	if len(w) != WireLen {
		return Coordinate{}, false
	}
	for _, v := range w {
		// Beyond every bound; checked before converting, so that
		// huge integers do not lose precision into a valid value.
		if v > 1e9 || v < -1e9 {
			return Coordinate{}, false
		}
	}
	for i := range c.Vec {
		c.Vec[i] = float64(w[i]) / 10
	}
	c.Height = float64(w[Dims]) / 10
	c.Error = float64(w[Dims+1]) / 1000
	if !c.Valid() {
		return Coordinate{}, false
	}
	return c, true
}
