package eval

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/golang/geo/s1"
	"github.com/golang/geo/s2"
	"github.com/paulmach/orb"
	"github.com/paulmach/orb/geojson"
)

// EarthRadiusM is the mean Earth radius (IUGG), metres: S2 works on the
// unit sphere, so distances are angles times this.
const EarthRadiusM = 6_371_008.8

// Geometry kinds of a fence.
const (
	ShapePolygon  = "polygon"
	ShapeCircle   = "circle"
	ShapeCorridor = "corridor"
)

// Event bits of a compiled fence.
const (
	evEnter uint8 = 1 << iota
	evExit
	evDwell
	evInside
	evOutside
)

var fenceEvents = map[string]uint8{FenceEnter: evEnter, FenceExit: evExit, FenceDwell: evDwell,
	FenceInside: evInside, FenceOutside: evOutside}

// compiledFence is a fence ready to test points against. Polygons and
// circles are in the rule set's fence index (which finds the few fences a
// point is in); polygons and corridors have a shape index of their own, for
// containment and distances to their boundary (the hysteresis margin).
type compiledFence struct {
	idx        int32
	id, name   string
	fleet      string
	classes    []string
	devices    []string
	shape      string
	events     uint8
	dwellMs    int64 // 0: the profile's
	speedLimit float64
	severity   Severity
	hyst       Hysteresis

	poly      *s2.Polygon
	center    s2.Point
	radius    s1.Angle // circle radius; corridor half-width
	lines     []*s2.Polyline
	vertices  int
	boundary  *s2.ShapeIndex // the fence's own edges: containment, distances
	distQuery *s2.EdgeQuery
	containsQ *s2.ContainsPointQuery
}

// applies reports whether the fence concerns a device of fleet and class.
func (f *compiledFence) applies(device, fleet, class string) bool {
	if f.fleet != "" && f.fleet != fleet {
		return false
	}
	if len(f.classes) > 0 && !slices.Contains(f.classes, class) {
		return false
	}
	if len(f.devices) > 0 && !slices.Contains(f.devices, device) {
		return false
	}
	return true
}

// Check checks the fence: its id, settings and geometry (closed rings in
// range, no ring crossing itself or another, a radius for a circle, a
// width for a corridor). The error names the fence and says what is
// wrong.
func (f *Fence) Check() error {
	_, err := f.Compile()
	return err
}

// Compile checks the fence and builds its geometry.
func (f *Fence) Compile() (*compiledFence, error) {
	cf, err := f.compile()
	if err == nil && cf.poly != nil {
		err = findCrossing(cf.poly)
	}
	if err != nil {
		return nil, fmt.Errorf("geofence %q: %w", f.ID, err)
	}
	return cf, nil
}

func (f *Fence) compile() (*compiledFence, error) {
	if !ValidID(f.ID) {
		return nil, errors.New("bad id: want 1-128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit")
	}
	if len(f.Name) > 256 {
		return nil, errors.New("name: over 256 bytes")
	}
	if f.Severity != "" && !f.Severity.Valid() {
		return nil, fmt.Errorf("unknown severity %q", f.Severity)
	}
	if err := nonNeg("speed_limit_kmh", f.SpeedLimit); err != nil {
		return nil, err
	}
	if err := nonNegDur("dwell", f.Dwell); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(f.Geometry)) == 0 {
		return nil, errors.New("geometry: missing (a GeoJSON Polygon, MultiPolygon, Point with radius_m, or LineString with width_m)")
	}
	g, err := geojson.UnmarshalGeometry(f.Geometry)
	if err != nil {
		return nil, fmt.Errorf("geometry: %w", err)
	}
	cf := &compiledFence{id: f.ID, name: f.Name, fleet: f.Fleet, classes: f.Classes, devices: f.Devices,
		dwellMs: f.Dwell.Ms(), speedLimit: f.SpeedLimit, severity: f.Severity}
	if f.Hysteresis != nil {
		cf.hyst = *f.Hysteresis
		if h := f.Hysteresis; h.MarginM != nil {
			if err := nonNeg("hysteresis.margin_m", *h.MarginM); err != nil {
				return nil, err
			}
		}
		if h := f.Hysteresis; h.ConfirmFixes != nil && (*h.ConfirmFixes < 1 || *h.ConfirmFixes > 1000) {
			return nil, fmt.Errorf("hysteresis.confirm_fixes: %d, want 1 to 1000", *h.ConfirmFixes)
		}
		if h := f.Hysteresis; h.ConfirmTime != nil {
			if err := nonNegDur("hysteresis.confirm_time", *h.ConfirmTime); err != nil {
				return nil, err
			}
		}
	}
	switch geom := g.Geometry().(type) {
	case orb.Polygon:
		if err := cf.setPolygons([]orb.Polygon{geom}); err != nil {
			return nil, err
		}
	case orb.MultiPolygon:
		if err := cf.setPolygons(geom); err != nil {
			return nil, err
		}
	case orb.Point:
		if err := finitePos("radius_m (a Point is a circle)", f.RadiusM); err != nil {
			return nil, err
		}
		if f.RadiusM > 1_000_000 {
			return nil, errors.New("radius_m: at most 1000 km")
		}
		if !validLonLat(geom) {
			return nil, fmt.Errorf("point %v: out of range (longitude, latitude in degrees)", geom)
		}
		cf.shape = ShapeCircle
		cf.center = pointOf(geom)
		cf.radius = s1.Angle(f.RadiusM / EarthRadiusM)
		cf.vertices = 1
	case orb.LineString:
		if err := cf.setLines([]orb.LineString{geom}, f.WidthM); err != nil {
			return nil, err
		}
	case orb.MultiLineString:
		if err := cf.setLines(geom, f.WidthM); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("geometry: %s is not a fence (a Polygon, MultiPolygon, Point with radius_m, or LineString with width_m)", g.Type)
	}
	if cf.shape != ShapeCircle && f.RadiusM != 0 {
		return nil, errors.New("radius_m: only for a Point (a circle)")
	}
	if cf.shape != ShapeCorridor && f.WidthM != 0 {
		return nil, errors.New("width_m: only for a LineString (a corridor)")
	}
	events := f.Events
	if events == nil {
		switch {
		case cf.shape == ShapeCorridor:
			events = []string{FenceOutside}
		case f.SpeedLimit > 0:
			events = nil // a speed zone: no fence events unless asked
		default:
			events = []string{FenceEnter, FenceExit}
		}
	}
	for _, e := range events {
		bit, ok := fenceEvents[e]
		if !ok {
			return nil, fmt.Errorf("events: unknown %q (enter, exit, dwell, inside, outside)", e)
		}
		cf.events |= bit
	}
	return cf, nil
}

func validLonLat(p orb.Point) bool {
	return !math.IsNaN(p[0]) && !math.IsNaN(p[1]) && p[0] >= -180 && p[0] <= 180 && p[1] >= -90 && p[1] <= 90
}

func pointOf(p orb.Point) s2.Point { return s2.PointFromLatLng(s2.LatLngFromDegrees(p[1], p[0])) }

// setPolygons builds one S2 polygon from every ring: each ring becomes a
// loop enclosing the smaller of its two sides (so either winding order is
// accepted), and the polygon's interior is what an odd number of loops
// contains (holes are holes, islands in holes are islands).
func (cf *compiledFence) setPolygons(polys []orb.Polygon) error {
	cf.shape = ShapePolygon
	var loops []*s2.Loop
	for pi, poly := range polys {
		if len(poly) == 0 {
			return fmt.Errorf("polygon %d: no ring", pi)
		}
		for ri, ring := range poly {
			pts, err := ringPoints(ring)
			if err != nil {
				return fmt.Errorf("polygon %d ring %d: %w", pi, ri, err)
			}
			cf.vertices += len(pts)
			if cf.vertices > MaxFenceVertex {
				return fmt.Errorf("over %d vertices", MaxFenceVertex)
			}
			l := s2.LoopFromPoints(pts)
			l.Normalize()
			if err := l.Validate(); err != nil {
				return fmt.Errorf("polygon %d ring %d: %w", pi, ri, err)
			}
			loops = append(loops, l)
		}
	}
	p := s2.PolygonFromLoops(loops)
	if err := p.Validate(); err != nil {
		return fmt.Errorf("polygon: %w", err)
	}
	cf.poly = p
	return nil
}

// findCrossing reports edges of p that cross each other (a ring crossing
// itself or another ring): such a polygon has no well-defined inside. The
// Go port of S2 does not check this in Validate (a TODO upstream), so it
// is done here with the library's crossing-edge query on the polygon's own
// index: O(edges × log edges), once per fence change.
func findCrossing(p *s2.Polygon) error {
	idx := s2.NewShapeIndex()
	idx.Add(p)
	q := s2.NewCrossingEdgeQuery(idx)
	for e := range p.NumEdges() {
		edge := p.Edge(e)
		for _, o := range q.Crossings(edge.V0, edge.V1, p, s2.CrossingTypeInterior) {
			if o != e {
				ll := s2.LatLngFromPoint(edge.V0)
				return fmt.Errorf("polygon: edges cross each other near (%.6f, %.6f): a ring crosses itself or another ring",
					ll.Lng.Degrees(), ll.Lat.Degrees())
			}
		}
	}
	return nil
}

// ringPoints checks a GeoJSON ring (closed, at least 4 positions, in range)
// and returns its distinct vertices, without the closing one and without
// repeated consecutive ones.
func ringPoints(ring orb.Ring) ([]s2.Point, error) {
	if len(ring) < 4 {
		return nil, fmt.Errorf("%d positions, want at least 4 (a closed ring)", len(ring))
	}
	if ring[0] != ring[len(ring)-1] {
		return nil, errors.New("not closed (the last position must repeat the first)")
	}
	pts := make([]s2.Point, 0, len(ring)-1)
	for i, c := range ring[:len(ring)-1] {
		if !validLonLat(c) {
			return nil, fmt.Errorf("position %d %v: out of range (longitude, latitude in degrees)", i, c)
		}
		if i > 0 && c == ring[i-1] {
			continue
		}
		pts = append(pts, pointOf(c))
	}
	if len(pts) < 3 {
		return nil, errors.New("fewer than 3 distinct positions")
	}
	return pts, nil
}

func (cf *compiledFence) setLines(lines []orb.LineString, widthM float64) error {
	cf.shape = ShapeCorridor
	if err := finitePos("width_m (a LineString is a corridor)", widthM); err != nil {
		return err
	}
	if widthM > 100_000 {
		return errors.New("width_m: at most 100 km")
	}
	cf.radius = s1.Angle(widthM / 2 / EarthRadiusM)
	for li, ls := range lines {
		if len(ls) < 2 {
			return fmt.Errorf("line %d: %d positions, want at least 2", li, len(ls))
		}
		lls := make([]s2.LatLng, 0, len(ls))
		for i, c := range ls {
			if !validLonLat(c) {
				return fmt.Errorf("line %d position %d %v: out of range", li, i, c)
			}
			if i > 0 && c == ls[i-1] {
				continue
			}
			lls = append(lls, s2.LatLngFromDegrees(c[1], c[0]))
		}
		cf.vertices += len(lls)
		if cf.vertices > MaxFenceVertex {
			return fmt.Errorf("over %d vertices", MaxFenceVertex)
		}
		cf.lines = append(cf.lines, s2.PolylineFromLatLngs(lls))
	}
	return nil
}

// side says on which side of the fence p is, and whether it is clearly
// there: at least marginM from the boundary. inIndex is what the rule set's
// shape index said (polygons: exact containment). For a polygon, whether p
// is clear of the boundary costs a distance query: it is only computed when
// wantClear says so (else clear is false). hint is the device's last
// closest corridor edge (see corridorSide).
func (cf *compiledFence) side(p s2.Point, marginM float64, inIndex, wantClear bool, hint *int32) (inside, clear bool) {
	margin := s1.Angle(marginM / EarthRadiusM)
	switch cf.shape {
	case ShapeCircle:
		d := cf.center.Distance(p)
		return d <= cf.radius, math.Abs(float64(d-cf.radius)) >= float64(margin)
	case ShapeCorridor:
		return cf.corridorSide(p, margin, hint)
	}
	inside = inIndex
	if margin == 0 {
		return inside, true
	}
	if !wantClear {
		return inside, false
	}
	return inside, !cf.boundaryQuery().IsDistanceLess(s2.NewMinDistanceToPointTarget(p), s1.ChordAngleFromAngle(margin))
}

// corridorHintSpan is how many edges either side of a device's last
// closest edge are tried before the full distance query.
const corridorHintSpan = 8

// corridorSide: p is inside a corridor when its line is within the half
// width, clearly so when within the half width less the margin, clearly
// outside when further than the half width plus the margin.
//
// The library's closest-edge query (s2.EdgeQuery on the corridor's own
// index) costs ~20 µs per fix on a 2,000-edge road, and was the
// evaluator's bottleneck in BenchmarkEvaluate (a vehicle checks its
// corridor at every fix). A vehicle moves along its corridor, so the
// edges next to its last closest one (*hint) are tried first with the
// library's point-to-edge distance: an edge within the half width less
// the margin proves "clearly inside", which is the common case. Anything
// else (near the edge, outside, a jump) takes the full query, which also
// moves the hint. The answer is the same either way.
func (cf *compiledFence) corridorSide(p s2.Point, margin s1.Angle, hint *int32) (inside, clear bool) {
	inner := cf.radius - margin
	if inner > 0 && hint != nil {
		line, edge := int(*hint>>20), int(*hint&0xfffff)
		if line < len(cf.lines) {
			pl := *cf.lines[line]
			lo, hi := max(0, edge-corridorHintSpan), min(len(pl)-2, edge+corridorHintSpan)
			limit := s1.ChordAngleFromAngle(inner)
			for e := lo; e <= hi; e++ {
				if s2.IsDistanceLess(p, pl[e], pl[e+1], limit) {
					*hint = int32(line<<20 | e)
					return true, true
				}
			}
		}
	}
	q := cf.boundaryQuery()
	res := q.FindEdges(s2.NewMinDistanceToPointTarget(p))
	if len(res) == 0 {
		return false, true
	}
	if hint != nil && res[0].EdgeID() >= 0 {
		*hint = res[0].ShapeID()<<20 | res[0].EdgeID()
	}
	d := res[0].Distance().Angle()
	if d <= cf.radius {
		return true, cf.radius-d >= margin
	}
	return false, d-cf.radius >= margin
}

// boundaryQuery returns the closest-edge query on the fence's own edges,
// building its index the first time.
func (cf *compiledFence) boundaryQuery() *s2.EdgeQuery {
	if cf.distQuery != nil {
		return cf.distQuery
	}
	idx := s2.NewShapeIndex()
	switch cf.shape {
	case ShapePolygon:
		idx.Add(cf.poly)
	case ShapeCorridor:
		for _, l := range cf.lines {
			idx.Add(l)
		}
	}
	cf.boundary = idx
	opts := s2.NewClosestEdgeQueryOptions().IncludeInteriors(false)
	if cf.shape == ShapeCorridor {
		// Only whether the line is within the half width plus a margin
		// matters; the margin is at most 10 km.
		opts = opts.MaxResults(1).DistanceLimit(s1.ChordAngleFromAngle(cf.radius + s1.Angle(10_000/EarthRadiusM)))
	}
	cf.distQuery = s2.NewClosestEdgeQuery(idx, opts)
	return cf.distQuery
}

// fenceIndex finds the fences a point is inside, among thousands: each
// polygon and circle is covered by S2 cells (s2.RegionCoverer), and a map
// from cell to fences gives, for a point, the fences whose covering holds
// one of the point's ancestor cells (one map lookup per level in use);
// those are then tested exactly. (An s2.ShapeIndex of every fence was
// tried first: 8 µs a point with 10,000 fences, most of a reading's cost
// in BenchmarkEvaluate. Interior coverings, to skip the exact test deep
// inside a fence, made compiling 10,000 fences take a minute.)
type fenceIndex struct {
	cells  map[s2.CellID][]int32
	levels uint64 // bit L: some covering has a cell at level L
	buf    []int32
}

// coverer is how fences are covered: cells from level 6 (~150 km) to
// cacheLevel (~150 m), every other level, at most 16 per fence. Stopping
// at cacheLevel lets a device that stays in one such cell reuse the
// fences found for it (devState.cell): no lookup at all.
var coverer = &s2.RegionCoverer{MinLevel: 6, MaxLevel: cacheLevel, LevelMod: 2, MaxCells: 16}

// cacheLevel is the finest level of the coverings (~150 m cells).
const cacheLevel = 16

func newFenceIndex(fences []*compiledFence) *fenceIndex {
	fi := &fenceIndex{cells: map[s2.CellID][]int32{}}
	fi.add(fences)
	return fi
}

// add adds fences to the index.
func (fi *fenceIndex) add(fences []*compiledFence) {
	for _, f := range fences {
		if f == nil {
			continue
		}
		var region s2.Region
		switch f.shape {
		case ShapePolygon:
			region = f.poly
		case ShapeCircle:
			region = s2.CapFromCenterAngle(f.center, f.radius)
		default:
			continue
		}
		for _, c := range coverer.Covering(region) {
			fi.cells[c] = append(fi.cells[c], f.idx)
			fi.levels |= 1 << uint(c.Level())
		}
	}
}

// near returns the fences whose covering holds cell (a cell at
// cacheLevel) or one of its ancestors: every fence a point in cell may be
// in. The slice is the caller's.
func (fi *fenceIndex) near(cell s2.CellID) []int32 {
	var out []int32
	for l := 0; l <= cacheLevel; l++ {
		if fi.levels&(1<<uint(l)) == 0 {
			continue
		}
		for _, i := range fi.cells[cell.Parent(l)] {
			if !slices.Contains(out, i) {
				out = append(out, i)
			}
		}
	}
	return out
}

// containing returns the live fences among near that contain p (exactly:
// circles by distance, polygons by their own index), in the order of their
// ids, so that the evaluation does not depend on the index's history. The
// slice is valid until the next call.
func (fi *fenceIndex) containing(p s2.Point, near []int32, fences []*compiledFence) []int32 {
	fi.buf = fi.buf[:0]
	for _, i := range near {
		if f := fences[i]; f != nil && f.contains(p) {
			fi.buf = append(fi.buf, i)
		}
	}
	if len(fi.buf) > 1 {
		slices.SortFunc(fi.buf, func(a, b int32) int { return strings.Compare(fences[a].id, fences[b].id) })
	}
	return fi.buf
}

// contains reports whether p is inside the fence (polygons and circles).
func (cf *compiledFence) contains(p s2.Point) bool {
	switch cf.shape {
	case ShapeCircle:
		return cf.center.Distance(p) <= cf.radius
	case ShapePolygon:
		if cf.containsQ == nil {
			cf.boundaryQuery()
			cf.containsQ = s2.NewContainsPointQuery(cf.boundary, s2.VertexModelSemiOpen)
		}
		return cf.containsQ.Contains(p)
	}
	return false
}

// distanceM is the great-circle distance between two points in degrees × 1e7, metres.
func distanceM(lat1, lon1, lat2, lon2 int32) float64 {
	a := s2.LatLngFromDegrees(float64(lat1)/1e7, float64(lon1)/1e7)
	b := s2.LatLngFromDegrees(float64(lat2)/1e7, float64(lon2)/1e7)
	return float64(a.Distance(b)) * EarthRadiusM
}
