from hpcdiff.cli import main

main()
