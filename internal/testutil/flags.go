package testutil

import "flag"

func flagSet() *flag.FlagSet { return flag.NewFlagSet("cephcsi-test", flag.ContinueOnError) }
