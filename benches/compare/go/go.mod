module greenstack-compare

go 1.22
