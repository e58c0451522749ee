// Builds the test bed's artifact store: an S3-compatible server (gofakes3, in memory) that Argo's
// artifact examples write to and read from. A test fixture, never shipped: it checks no
// signature, so any access key is accepted.
module delegatepods.dev/e2e/tools/artifact-store

go 1.24.0

require github.com/johannesboyne/gofakes3 v1.2.0

require (
	github.com/ryszard/goskiplist v0.0.0-20150312221310-2dfbae5fcf46 // indirect
	go.shabbyrobe.org/gocovmerge v0.0.0-20230507111327-fa4f82cfbf4d // indirect
	golang.org/x/tools v0.8.0 // indirect
)
