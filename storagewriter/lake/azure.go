package lake

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
)

// Environment variables that carry Azure credentials: secrets stay out of
// flags (visible in ps) and out of logs.
const (
	// EnvAzureConnectionString holds a storage connection string
	// (AccountName and AccountKey, or SharedAccessSignature).
	EnvAzureConnectionString = "DROVER_LAKE_AZURE_CONNECTION_STRING"
	// EnvAzureAccountKey holds the account's shared key; the account name
	// comes from the URL.
	EnvAzureAccountKey = "DROVER_LAKE_AZURE_ACCOUNT_KEY"
)

// azureTarget is a parsed -lake-azure-url: where blobs go.
type azureTarget struct {
	// containerURL is scheme://host[/account]/container, without query.
	containerURL string
	// account is the storage account's name, from the host
	// (ACCOUNT.blob.core.windows.net) or the first path segment of an IP
	// style URL (Azurite: http://127.0.0.1:10000/ACCOUNT/...); may be empty
	// for custom domains.
	account string
	// container is the container's name.
	container string
	// prefix is the folder inside the container that holds the lake: ""
	// or a path ending in "/".
	prefix string
	// sas is the URL's query when it carries a shared access signature.
	sas string
}

// parseAzureURL reads a container URL (with an optional folder after the
// container), or an account URL when containerName is set. An ADLS Gen2
// endpoint (ACCOUNT.dfs.core.windows.net), or a Spark-style
// abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/FOLDER URL, is turned into
// the account's Blob endpoint, which serves the same data.
func parseAzureURL(raw, containerName string) (azureTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return azureTarget{}, err
	}
	if (u.Scheme == "abfss" || u.Scheme == "abfs") && u.User != nil {
		u.Path = "/" + u.User.Username() + u.Path
		u.Scheme, u.User = "https", nil
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return azureTarget{}, fmt.Errorf("%q: want an http(s) URL", raw)
	}
	if u.Host == "" {
		return azureTarget{}, fmt.Errorf("%q: no host", raw)
	}
	if host, ok := strings.CutSuffix(u.Host, ".dfs.core.windows.net"); ok {
		u.Host = host + ".blob.core.windows.net"
	}
	parts, err := sas.ParseURL(u.String())
	if err != nil {
		return azureTarget{}, err
	}
	t := azureTarget{account: parts.IPEndpointStyleInfo.AccountName}
	if t.account == "" {
		if acct, _, ok := strings.Cut(u.Host, "."); ok && strings.HasSuffix(u.Host, ".core.windows.net") {
			t.account = acct
		}
	}
	t.container, t.prefix = parts.ContainerName, parts.BlobName
	if containerName != "" {
		if t.container != "" {
			// The URL goes on past the account: what follows is a folder.
			t.prefix = strings.Trim(t.container+"/"+t.prefix, "/")
		}
		t.container = containerName
	}
	if t.container == "" {
		return azureTarget{}, fmt.Errorf("%q: no container (give a container URL, or -lake-azure-container)", raw)
	}
	if t.prefix = strings.Trim(t.prefix, "/"); t.prefix != "" {
		t.prefix += "/"
	}
	base := u.Scheme + "://" + u.Host
	if parts.IPEndpointStyleInfo.AccountName != "" {
		base += "/" + parts.IPEndpointStyleInfo.AccountName
	}
	t.containerURL = base + "/" + t.container
	if q := u.Query(); q.Get("sig") != "" {
		t.sas = u.RawQuery
	}
	return t, nil
}

// connString is what drover reads from a storage connection string.
type connString struct {
	accountName, accountKey, sas string
}

// parseConnString reads the credential parts of a storage connection string
// (key=value pairs separated by ';'). Its endpoints are not used: the URL
// says where the lake is.
func parseConnString(s string) (connString, error) {
	var cs connString
	for kv := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			continue
		}
		switch strings.ToLower(k) {
		case "accountname":
			cs.accountName = v
		case "accountkey":
			cs.accountKey = v
		case "sharedaccesssignature":
			cs.sas = strings.TrimPrefix(v, "?")
		}
	}
	if cs.sas == "" && (cs.accountName == "" || cs.accountKey == "") {
		return connString{}, errors.New("connection string has neither AccountName and AccountKey nor SharedAccessSignature")
	}
	return cs, nil
}

// newContainerClient builds the container client from the URL and whichever
// credential the configuration gives: a SAS in the URL, a connection string,
// or an account key.
func newContainerClient(t azureTarget, connStr, accountKey string) (*container.Client, error) {
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry: policy.RetryOptions{
			MaxRetries: 3,
			// One try may carry a file of hundreds of MiB (a compacted
			// hour); the default (1 min) would cut it on a slow link.
			TryTimeout: 5 * time.Minute,
		},
		Telemetry: policy.TelemetryOptions{ApplicationID: "drover-lake"},
	}}
	switch {
	case t.sas != "":
		return container.NewClientWithNoCredential(t.containerURL+"?"+t.sas, opts)
	case connStr != "":
		cs, err := parseConnString(connStr)
		if err != nil {
			return nil, err
		}
		if cs.sas != "" {
			return container.NewClientWithNoCredential(t.containerURL+"?"+cs.sas, opts)
		}
		if t.account != "" && cs.accountName != t.account {
			return nil, fmt.Errorf("connection string is for account %q, the URL names account %q", cs.accountName, t.account)
		}
		cred, err := container.NewSharedKeyCredential(cs.accountName, cs.accountKey)
		if err != nil {
			return nil, err
		}
		return container.NewClientWithSharedKeyCredential(t.containerURL, cred, opts)
	case accountKey != "":
		if t.account == "" {
			return nil, errors.New("account key given but the URL names no account (ACCOUNT.blob.core.windows.net)")
		}
		cred, err := container.NewSharedKeyCredential(t.account, accountKey)
		if err != nil {
			return nil, err
		}
		return container.NewClientWithSharedKeyCredential(t.containerURL, cred, opts)
	}
	return nil, fmt.Errorf("no credential: set %s or %s, or put a SAS in the URL", EnvAzureConnectionString, EnvAzureAccountKey)
}

// azureDest is a lake in an Azure Blob Storage container (ADLS Gen2
// included, through its Blob endpoint).
type azureDest struct {
	client  *container.Client
	target  azureTarget
	scratch string // local folder for downloaded copies
	hook    hookFunc
}

func (d *azureDest) String() string {
	return "azure " + d.target.containerURL + "/" + d.target.prefix
}

// commit uploads the file as a block blob. Up to 256 MiB that is one Put
// Blob; above, staged blocks and one Put Block List. Either way the blob
// appears whole when the last call succeeds, never in part. If-None-Match: *
// keeps a name from ever being overwritten.
func (d *azureDest) commit(ctx context.Context, tmpPath, name string) error {
	f, err := os.Open(tmpPath)
	if err != nil {
		return fmt.Errorf("open built file: %w", err)
	}
	defer f.Close()
	if d.hook != nil {
		d.hook(fpBeforeRename)
	}
	bb := d.client.NewBlockBlobClient(d.target.prefix + name)
	_, err = bb.UploadFile(ctx, f, &blockblob.UploadFileOptions{
		BlockSize:   8 << 20,
		Concurrency: 4,
		HTTPHeaders: &blob.HTTPHeaders{BlobContentType: to.Ptr("application/vnd.apache.parquet")},
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{
			IfNoneMatch: to.Ptr(azcore.ETagAny),
		}},
	})
	if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) {
		// Also what a retry of a Put Blob whose first answer was lost sees:
		// the caller then uploads under another name, and the rows are
		// there twice, which readers deduplicate by key.
		return errExists
	}
	if err != nil {
		return fmt.Errorf("upload blob: %w", err)
	}
	if d.hook != nil {
		d.hook(fpAfterRename)
	}
	f.Close()
	if err := os.Remove(tmpPath); err != nil {
		return fmt.Errorf("remove built file: %w", err)
	}
	return nil
}

func (d *azureDest) list(ctx context.Context, prefix string) ([]fileInfo, error) {
	var files []fileInfo
	pager := d.client.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: to.Ptr(d.target.prefix + prefix)})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list blobs: %w", err)
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name == nil || !strings.HasSuffix(*item.Name, fileExt) {
				continue
			}
			var size int64
			if item.Properties != nil && item.Properties.ContentLength != nil {
				size = *item.Properties.ContentLength
			}
			files = append(files, fileInfo{name: strings.TrimPrefix(*item.Name, d.target.prefix), size: size})
		}
	}
	return files, nil
}

// open downloads the blob into the scratch folder: Parquet is read from its
// footer backwards, which wants random access.
func (d *azureDest) open(ctx context.Context, name string) (readAtCloser, int64, error) {
	f, err := os.CreateTemp(d.scratch, "download-*.tmp")
	if err != nil {
		return nil, 0, fmt.Errorf("create download file: %w", err)
	}
	rm := &removeOnClose{File: f}
	n, err := d.client.NewBlobClient(d.target.prefix+name).DownloadFile(ctx, f, &blob.DownloadFileOptions{
		BlockSize: 8 << 20, Concurrency: 4,
	})
	if err != nil {
		rm.Close()
		return nil, 0, fmt.Errorf("download blob %s: %w", name, err)
	}
	return rm, n, nil
}

func (d *azureDest) remove(ctx context.Context, names []string) error {
	for _, name := range names {
		_, err := d.client.NewBlobClient(d.target.prefix+name).Delete(ctx, nil)
		if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
			return fmt.Errorf("delete blob %s: %w", name, err)
		}
	}
	return nil
}

// removeOnClose is a downloaded copy, removed when closed.
type removeOnClose struct{ *os.File }

func (f *removeOnClose) Close() error {
	err := f.File.Close()
	if rmErr := os.Remove(f.Name()); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// scratchName returns the scratch folder of a writer inside dir.
func scratchName(dir, writer string) string {
	return filepath.Join(dir, tmpDir, writer)
}
