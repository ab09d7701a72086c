package lake

import (
	"bytes"
	"context"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// azBlob is a blob of the test container, read back.
type azBlob struct {
	name string
	rows []Row
}

// readContainer downloads and decodes every blob under prefix.
func readContainer(t testing.TB, c *container.Client, prefix string) []azBlob {
	t.Helper()
	ctx := context.Background()
	var blobs []azBlob
	pager := c.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("list blobs: %v", err)
		}
		for _, item := range page.Segment.BlobItems {
			var buf bytes.Buffer
			resp, err := c.NewBlobClient(*item.Name).DownloadStream(ctx, nil)
			if err != nil {
				t.Fatalf("download %s: %v", *item.Name, err)
			}
			if _, err := buf.ReadFrom(resp.Body); err != nil {
				t.Fatalf("download %s: %v", *item.Name, err)
			}
			resp.Body.Close()
			rows, _ := decodeParquet(t, *item.Name, buf.Bytes())
			blobs = append(blobs, azBlob{name: *item.Name, rows: rows})
		}
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].name < blobs[j].name })
	return blobs
}

func blobRows(blobs []azBlob) []Row {
	var rows []Row
	for _, b := range blobs {
		rows = append(rows, b.rows...)
	}
	sortRows(rows)
	return rows
}

// Against a real Azurite: files land in the container under the folder and
// partition path, whole, and read back; compaction works there too; nothing
// stays in the local scratch folder.
func TestAzure(t *testing.T) {
	az := testenv.Azurite(t)
	cfg := testConfig(t)
	cfg.AzureURL = az.ContainerURL + "/telemetry/v1"
	cfg.AzureConnectionString = az.ConnectionString
	now := baseTime.Add(10 * time.Minute)
	s, err := newSink(cfg, nil, nil, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx := context.Background()

	var recs []*telemetry.EnrichedRecord
	for i := range 3 {
		b := makeRecords(500, 5, baseTime.Add(time.Duration(i)*20*time.Minute), time.Second, uint64(1+1000*i))
		if err := s.Write(ctx, b); err != nil {
			t.Fatalf("Write: %v", err)
		}
		recs = append(recs, b...)
	}
	c := az.ContainerClient(t)
	blobs := readContainer(t, c, "")
	nameRE := regexp.MustCompile(`^telemetry/v1/date=2025-03-14/hour=0[78]/w-1-\d{19}-\d{6}\.parquet$`)
	for _, b := range blobs {
		if !nameRE.MatchString(b.name) {
			t.Errorf("blob %q: not under telemetry/v1/date=.../hour=.../", b.name)
		}
		for _, r := range b.rows {
			if !strings.HasPrefix(b.name, "telemetry/v1/"+partitionOf(r.TimeMs).dir()) {
				t.Errorf("%s holds a row of %s", b.name, partitionOf(r.TimeMs))
			}
		}
	}
	if len(blobs) != 3 { // 07:30, 07:50 and 08:10, 100 s each
		t.Errorf("%d blobs, want 3", len(blobs))
	}
	sameRows(t, blobRows(blobs), expectedRows(t, recs))
	if files := readLake(t, cfg.Dir); len(files) != 0 {
		t.Errorf("%d Parquet files in the local folder of an Azure lake", len(files))
	}

	// Close the hours: one blob per hour, same rows.
	now = baseTime.Add(3 * time.Hour)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	blobs = readContainer(t, c, "telemetry/v1/")
	if len(blobs) != 2 {
		t.Errorf("%d blobs after compaction, want 2", len(blobs))
	}
	sameRows(t, blobRows(blobs), expectedRows(t, recs))
	if left := scratchEntries(t, cfg); len(left) != 0 {
		t.Errorf("scratch holds %v", left)
	}

	// The account key and the container flag work as well.
	cfg2 := testConfig(t)
	cfg2.AzureURL = az.BlobEndpoint
	cfg2.AzureContainer = az.Container
	cfg2.AzureAccountKey = az.AccountKey
	cfg2.Name = "w-2"
	s2 := newTestSink(t, cfg2)
	if err := s2.Write(ctx, recs[:10]); err != nil {
		t.Fatalf("Write with the account key: %v", err)
	}
	if got := readContainer(t, c, "date="); len(got) != 1 || len(got[0].rows) != 10 {
		t.Errorf("account key: %d blobs at the container's root", len(got))
	}
}

// An unreachable Azure is a transient error, within ctx's deadline.
func TestAzureDownTransient(t *testing.T) {
	cfg := testConfig(t)
	cfg.AzureURL = "http://127.0.0.1:9/devstoreaccount1/lake" // discard port: refused
	cfg.AzureAccountKey = testenv.AzuriteAccountKey
	s := newTestSink(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := s.Write(ctx, makeRecords(10, 2, baseTime, time.Second, 1))
	if err == nil || sink.IsPermanent(err) {
		t.Fatalf("Write = %v, want a transient error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Write took %v with a 1s deadline", d)
	}
	if left := scratchEntries(t, cfg); len(left) != 0 {
		t.Errorf("scratch holds %v", left)
	}
}
