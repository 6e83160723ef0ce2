from smsops.cli import main

main()
